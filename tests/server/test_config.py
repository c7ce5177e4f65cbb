"""Configuration: defaults, TOML, TIDINGS_* variables, arguments, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from tidings.core.channel import ChannelName, NamespaceName
from tidings.core.namespace import Policy
from tidings.errors import ConfigError
from tidings.server.config import load_settings


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "tidings.toml"
    path.write_text(text)
    return path


def test_defaults_bind_loopback_with_public_default_and_per_user_namespace() -> None:
    settings = load_settings()
    assert (settings.host, settings.port, settings.data) == ("127.0.0.1", 8000, None)
    table = settings.namespace_table()
    assert table.options_for(ChannelName("news")).policy is Policy.PUBLIC
    assert table.options_for(ChannelName("news")).client_publish is False
    assert table.options_for(ChannelName("user:42")).policy is Policy.USER


def test_a_toml_file_configures_settings_and_namespaces(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        api_key = "k"
        ping_interval = "10s"
        outbound_buffer = "256KiB"
        allowed_origins = ["https://app.example.com"]
        [namespaces.room]
        client_publish = true
        presence = true
        history_size = 50
        history_ttl = "2m"
        max_data_size = "1KiB"
        """,
    )
    settings = load_settings(path)
    assert settings.api_key == "k"
    assert settings.ping_interval_s == 10
    assert settings.outbound_buffer_bytes == 256 * 1024
    assert settings.allowed_origins == ("https://app.example.com",)
    room = settings.namespace_table().options_for(ChannelName("room:1"))
    assert (room.client_publish, room.presence) == (True, True)
    assert (room.history.size, room.history.ttl_ms) == (50, 120_000)
    assert room.max_data_bytes == 1024


def test_environment_overrides_the_file_and_arguments_override_both(tmp_path: Path) -> None:
    path = write(tmp_path, 'port = 9000\napi_key = "from-file"\n')
    environ = {
        "TIDINGS_PORT": "9001",
        "TIDINGS_API_KEY": "from-env",
        "TIDINGS_NAMESPACES__CHAT__CLIENT_PUBLISH": "true",
        "OTHER": "ignored",
    }
    settings = load_settings(path, environ, {"port": 9002, "data": None})
    assert settings.port == 9002
    assert settings.api_key == "from-env"
    chat = settings.namespace_table().options_for(ChannelName("chat:x"))
    assert chat.client_publish is True


def test_the_default_namespace_is_configured_under_the_name_default(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, "[namespaces.default]\nhistory_size = 7\n"))
    assert settings.namespaces[NamespaceName("")].history.size == 7
    # an unconfigured namespace takes the default namespace's options
    assert settings.namespace_table().options_for(ChannelName("other:1")).history.size == 7


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("prot = 1", "unknown setting 'prot'"),
        ("port = -1", "port must be a whole number"),
        ('ping_interval = "soon"', "expected a duration"),
        ('outbound_buffer = "big"', "expected a size"),
        ("[namespaces.room]\npolicy = 'secret'", "expected one of ['public', 'user', 'token']"),
        ("[namespaces.room]\nhistory = 5", "unknown settings ['history']"),
        ("[namespaces.room]\nhistory_ttl = 0", "history_ttl must be more than 0"),
        ("port = ", "not valid TOML"),
    ],
)
def test_bad_configuration_is_refused_with_a_message_naming_the_setting(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(write(tmp_path, text))
    assert message in str(raised.value)


def test_a_missing_config_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(tmp_path / "absent.toml")


def test_a_bad_environment_value_names_the_variable_setting() -> None:
    with pytest.raises(ConfigError, match="max_connections"):
        load_settings(environ={"TIDINGS_MAX_CONNECTIONS": "many"})
    with pytest.raises(ConfigError, match="TIDINGS_NAMESPACES__<NAME>__<SETTING>"):
        load_settings(environ={"TIDINGS_A__B": "1"})


def test_sqlite_durability_is_full_unless_set_to_fast() -> None:
    assert load_settings().sqlite_durability == "full"
    fast = load_settings(environ={"TIDINGS_SQLITE_DURABILITY": "fast"})
    assert fast.sqlite_durability == "fast"
    with pytest.raises(ConfigError, match="sqlite_durability"):
        load_settings(environ={"TIDINGS_SQLITE_DURABILITY": "sometimes"})
