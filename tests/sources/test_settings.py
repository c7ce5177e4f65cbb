"""``[[sources]]`` settings: the array in the configuration file and the kinds
(sources/registry.py, loaded by server/config.py) and the table source's own keys
(sources/table.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tidings.cli.serve import describe_settings
from tidings.errors import ConfigError
from tidings.server.config import load_settings
from tidings.sources import registry
from tidings.sources.registry import SourceKind, SourceMissingExtra, SourceSettings, create_source
from tidings.sources.table import TableSource

TABLE = """
[[sources]]
name = "chat"
kind = "table"
dsn = "postgres://app:s3cret@db.internal/chat"
table = "messages"
channel = "room:{room_id}"
columns = ["id", "body"]
poll_interval = "250ms"
batch = 100
"""


def load(tmp_path: Path, text: str) -> list[SourceSettings]:
    path = tmp_path / "tidings.toml"
    path.write_text(text)
    return list(load_settings(path).sources)


def test_the_sources_array_becomes_named_settings_made_by_their_kind(tmp_path: Path) -> None:
    (chat,) = load(tmp_path, TABLE)
    assert (chat.name, chat.kind, chat.options["table"]) == ("chat", "table", "messages")
    source = create_source(chat)
    assert isinstance(source, TableSource)
    settings = source.settings
    assert settings.channel.fields == ("room_id",)
    assert (settings.columns, settings.batch, settings.poll_interval_s) == (
        ("id", "body"),
        100,
        0.25,
    )
    assert settings.relation.cursor == "id"


def test_check_config_shows_sources_without_the_password(tmp_path: Path) -> None:
    path = tmp_path / "tidings.toml"
    path.write_text(TABLE)
    lines = describe_settings(load_settings(path))
    assert "sources.chat.kind = table" in lines
    assert "sources.chat.dsn = postgres://app:********@db.internal/chat" in lines
    assert not any("s3cret" in line for line in lines)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("sources = 3", "sources must be an array of tables"),
        ('[[sources]]\nkind = "table"', "source #1 needs a name"),
        ('[[sources]]\nname = "Chat!"\nkind = "table"', "source #1 needs a name"),
        (
            '[[sources]]\nname = "a"\nkind = "table"\n[[sources]]\nname = "a"\nkind = "table"',
            "two sources are named 'a'",
        ),
        ('[[sources]]\nname = "a"\nkind = "rss"', "source 'a' has kind 'rss'; known kinds"),
        ('[[sources]]\nname = "a"', "source 'a' has kind None"),
    ],
)
def test_a_bad_sources_array_is_one_line(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(tmp_path, text)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_sources_do_not_come_from_the_environment() -> None:
    with pytest.raises(
        ConfigError, match=r"array of tables \(\[\[sources\]\] in the config file\)"
    ):
        load_settings(environ={"TIDINGS_SOURCES": "chat"})


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"dsn": None}, "sources.chat.dsn is required"),
        ({"dsn": "mysql://db/chat"}, "sources.chat.dsn must be postgres://"),
        ({"dsn": "sqlite:///"}, "sources.chat.dsn must be sqlite:///relative"),
        ({"select": "SELECT 1"}, "needs either table or select"),
        ({"table": None}, "needs either table or select"),
        ({"colums": ["id"]}, "unknown settings ['colums']"),
        ({"columns": "id"}, "sources.chat.columns must be a list of column names"),
        ({"columns": []}, "sources.chat.columns must be a list of column names"),
        ({"batch": 0}, "sources.chat.batch must be a whole number from 1 to 10000"),
        ({"batch": True}, "sources.chat.batch must be a whole number"),
        ({"poll_interval": "0s"}, "sources.chat.poll_interval must be more than 0"),
        (
            {"channel": "room:{room_id!r}"},
            "sources.chat.channel 'room:{room_id!r}': each placeholder",
        ),
        ({"channel": None}, "sources.chat.channel is required"),
    ],
)
def test_a_bad_table_setting_is_one_line_naming_it(change: dict[str, object], message: str) -> None:
    options: dict[str, object] = {
        "dsn": "sqlite:///app.db",
        "table": "messages",
        "channel": "room:{room_id}",
    }
    options.update(change)
    options = {key: value for key, value in options.items() if value is not None}
    with pytest.raises(ConfigError) as caught:
        create_source(SourceSettings("chat", "table", options))
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_kind_whose_dependency_is_missing_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    kind = SourceKind("tests.sources.kind_missing_dependency", "Missing", "fancy")
    monkeypatch.setitem(registry.SOURCE_KINDS, "fancy", kind)
    with pytest.raises(SourceMissingExtra) as caught:
        create_source(SourceSettings("feed", "fancy", {}))
    assert str(caught.value) == (
        "source 'feed' of kind 'fancy' needs the 'tidings_test_no_such_package' package, "
        "which is not installed: pip install 'tidings[fancy]'"
    )
