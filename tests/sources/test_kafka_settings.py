"""A Kafka source's ``[[sources]]`` table (tidings.sources.kafka_settings): what it
accepts, its defaults, and the one line each mistake gets. No Kafka needed."""

from __future__ import annotations

from collections.abc import Mapping

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tidings.errors import ConfigError
from tidings.sources.base import Source
from tidings.sources.kafka import KafkaSource
from tidings.sources.kafka_settings import KafkaSettings

MINIMAL: Mapping[str, object] = {
    "kind": "kafka",
    "bootstrap_servers": "k1:9092",
    "topics": ["orders"],
    "channel": "user:{key}",
}


def _parse(**changes: object) -> KafkaSettings:
    table = {**MINIMAL, **changes}
    return KafkaSettings.parse("orders", {k: v for k, v in table.items() if v is not None})


def test_minimal_table_takes_the_defaults() -> None:
    source: Source = KafkaSource.from_settings("orders", MINIMAL)  # mypy checks the protocol
    assert source.name == "orders"
    assert isinstance(source, KafkaSource)
    settings = source.settings
    assert settings.bootstrap_servers == ("k1:9092",)
    assert settings.topics == ("orders",)
    assert settings.group_id == "tidings-orders"
    assert settings.mapping.channel.text == "user:{key}"
    assert settings.mapping.data.text == "value"
    assert settings.auto_offset_reset == "earliest"
    assert settings.session_timeout_s == 10.0


def test_full_table_is_read() -> None:
    settings = _parse(
        bootstrap_servers=["k1:9092", "[::1]:9093", "k3"],
        topics="orders",
        group_id="chat-feed",
        channel="room:{value.room_id}",
        data="value.payload",
        auto_offset_reset="latest",
        session_timeout="30s",
    )
    assert settings.bootstrap_servers == ("k1:9092", "[::1]:9093", "k3")
    assert settings.topics == ("orders",)
    assert settings.group_id == "chat-feed"
    assert settings.mapping.data.path == ("payload",)
    assert settings.auto_offset_reset == "latest"
    assert settings.session_timeout_s == 30.0


SERVERS = st.builds(
    "{}:{}".format, st.from_regex(r"[a-z0-9.\-]{1,12}", fullmatch=True), st.integers(1, 65535)
)


@given(st.lists(SERVERS, min_size=1))
def test_bootstrap_servers_as_a_list_or_a_comma_separated_string_agree(servers: list[str]) -> None:
    from_list = _parse(bootstrap_servers=servers).bootstrap_servers
    from_text = _parse(bootstrap_servers=", ".join(servers)).bootstrap_servers
    assert from_list == from_text == tuple(dict.fromkeys(servers))


@pytest.mark.parametrize(
    ("changes", "complaint"),
    [
        ({"bootstrap_servers": None}, r"sources\.orders\.bootstrap_servers is missing"),
        ({"topics": None}, r"sources\.orders\.topics is missing"),
        ({"channel": None}, r"sources\.orders\.channel is missing"),
        ({"topics": []}, r"sources\.orders\.topics is empty"),
        ({"topics": ["orders", ""]}, r"topics must be a list of non-empty strings"),
        ({"topics": 3}, r"topics must be a list of strings"),
        ({"bootstrap_servers": "k1:9092,,"}, r"bootstrap_servers must be a list of non-empty"),
        (
            {"bootstrap_servers": "k1:port"},
            r"bootstrap_servers: 'k1:port' is not host or host:port",
        ),
        ({"bootstrap_servers": ["k1:70000"]}, r"'k1:70000' is not host or host:port"),
        ({"bootstrap_servers": "::1"}, r"'::1' is not host or host:port"),
        ({"group_id": ""}, r"group_id must be a non-empty string"),
        ({"channel": "room:{value}"}, r"sources\.orders\.channel: \{value\} .* not a placeholder"),
        ({"data": "key"}, r"sources\.orders\.data: 'key' is not value or value\.FIELD"),
        ({"auto_offset_reset": "newest"}, r"expected 'earliest' or 'latest'"),
        ({"session_timeout": "soon"}, r"sources\.orders\.session_timeout is 'soon'"),
        ({"session_timeout": "100ms"}, r"session_timeout must be at least 300ms"),
        ({"topic": "orders"}, r"sources\.orders\.topic: a kafka source has no such setting"),
    ],
)
def test_each_mistake_gets_one_line_naming_the_setting(
    changes: dict[str, object], complaint: str
) -> None:
    with pytest.raises(ConfigError, match=complaint) as raised:
        _parse(**changes)
    assert "\n" not in str(raised.value)
