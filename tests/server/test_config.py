"""Configuration: defaults, TOML, TIDINGS_* variables, arguments, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from tidings.core.channel import ChannelName, NamespaceName
from tidings.core.namespace import Policy
from tidings.errors import ConfigError
from tidings.server.config import Settings, load_settings


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


def test_websocket_limits_follow_the_largest_namespace_data_size(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [namespaces.small]
        max_data_size = "1KiB"
        [namespaces.large]
        max_data_size = "1MiB"
        """,
    )
    settings = load_settings(path, environ={})
    assert settings.max_data_bytes == 1024 * 1024
    # docs/protocol.md §3: the largest data plus 4 KiB of envelope; 1009 past four times that.
    assert settings.max_frame_bytes == 1024 * 1024 + 4096
    assert settings.max_ws_message_bytes == 4 * (1024 * 1024 + 4096)


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
        ("poll_watches = 0", "poll_watches must be a whole number >= 1"),
        ("hot_channel_sampling = 0", "hot_channel_sampling must be a whole number >= 1"),
    ],
)
def test_bad_configuration_is_refused_with_a_message_naming_the_setting(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(write(tmp_path, text))
    assert message in str(raised.value)


def test_poll_watches_caps_the_watched_channels_from_file_or_environment() -> None:
    assert load_settings().poll_watches == 10_000
    assert load_settings(environ={"TIDINGS_POLL_WATCHES": "500"}).poll_watches == 500


def test_a_missing_config_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(tmp_path / "absent.toml")


def test_a_bad_environment_value_names_the_variable_setting() -> None:
    with pytest.raises(ConfigError, match="max_connections"):
        load_settings(environ={"TIDINGS_MAX_CONNECTIONS": "many"})
    with pytest.raises(ConfigError, match="TIDINGS_NAMESPACES__<NAME>__<SETTING>"):
        load_settings(environ={"TIDINGS_A__B": "1"})


# -- secrets: empty is a mistake, not "unset" (issue #11, item 9) ----------------------


@pytest.mark.parametrize("name", ["api_key", "jwt_secret"])
def test_an_empty_secret_in_the_environment_is_a_config_error(name: str) -> None:
    with pytest.raises(ConfigError, match=f"{name} is empty"):
        load_settings(environ={f"TIDINGS_{name.upper()}": ""})


@pytest.mark.parametrize("name", ["api_key", "jwt_secret"])
def test_an_empty_or_blank_secret_in_the_file_is_a_config_error(tmp_path: Path, name: str) -> None:
    for value in ('""', '"   "'):
        with pytest.raises(ConfigError, match=f"{name} is empty"):
            load_settings(write(tmp_path, f"{name} = {value}\n"))


def test_an_api_key_with_surrounding_whitespace_is_refused_as_no_caller_could_send_it() -> None:
    with pytest.raises(ConfigError, match="api_key starts or ends with whitespace"):
        load_settings(environ={"TIDINGS_API_KEY": "key\n"})


# -- limits that would refuse every client (item 15) -----------------------------------


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("COMMAND_RATE", "0", "command_rate must be more than 0, got 0"),
        ("COMMAND_RATE", "-5", "command_rate must be a number >= 0"),
        ("COMMAND_BURST", "0.5", "command_burst must be at least 1, got 0.5"),
        ("MAX_CONNECTIONS", "0", "max_connections must be at least 1, got 0"),
        ("MAX_CHANNELS_PER_CONNECTION", "0", "max_channels_per_connection must be at least 1"),
        ("OUTBOUND_BUFFER", "0", "outbound_buffer must be at least 1, got 0"),
        ("PING_INTERVAL", "0", "ping_interval must be more than 0, got 0"),
        ("PORT", "70000", "port must be from 0 to 65535, got 70000"),
        (
            "NAMESPACES__ROOM__MAX_DATA_SIZE",
            "0",
            "namespaces.room.max_data_size must be at least 1",
        ),
    ],
)
def test_a_limit_no_client_could_live_with_is_refused_at_load(
    variable: str, value: str, message: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(environ={f"TIDINGS_{variable}": value})
    assert message in str(raised.value)


def test_settings_built_in_code_are_checked_too() -> None:
    # An embedding application builds Settings itself, bypassing load_settings.
    with pytest.raises(ConfigError, match="command_rate must be more than 0"):
        Settings(command_rate=0)


def test_fractional_rates_and_the_smallest_limits_are_accepted() -> None:
    settings = load_settings(
        environ={
            "TIDINGS_COMMAND_RATE": "0.5",
            "TIDINGS_COMMAND_BURST": "1",
            "TIDINGS_MAX_CONNECTIONS": "1",
            "TIDINGS_MAX_CHANNELS_PER_CONNECTION": "1",
        }
    )
    assert (settings.command_rate, settings.command_burst) == (0.5, 1)


# -- an open server API stays on this machine unless said otherwise (item 8) ----------


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "", "192.0.2.7", "tidings.example.com"])
def test_an_open_api_bound_beyond_loopback_is_refused_at_load(host: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(environ={"TIDINGS_HOST": host})
    message = str(raised.value)
    assert "no api_key is set" in message
    assert "allow_open_api" in message
    assert "\n" not in message


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "localhost", "::1"])
def test_an_open_api_on_loopback_is_accepted(host: str) -> None:
    assert load_settings(environ={"TIDINGS_HOST": host}).api_key is None


def test_an_open_api_beyond_loopback_starts_with_a_key_or_when_allowed_explicitly(
    tmp_path: Path,
) -> None:
    keyed = load_settings(environ={"TIDINGS_HOST": "0.0.0.0", "TIDINGS_API_KEY": "k"})
    assert keyed.api_key == "k"
    allowed = load_settings(write(tmp_path, 'host = "0.0.0.0"\nallow_open_api = true\n'))
    assert (allowed.host, allowed.allow_open_api, allowed.api_key) == ("0.0.0.0", True, None)


# -- namespaces do not depend on the order they are read in (item 11) ------------------

_ROOM_PUBLISH = ("TIDINGS_NAMESPACES__ROOM__CLIENT_PUBLISH", "true")
_DEFAULT_TOKEN = ("TIDINGS_NAMESPACES__DEFAULT__POLICY", "token")


@pytest.mark.parametrize(
    "environ",
    [dict([_ROOM_PUBLISH, _DEFAULT_TOKEN]), dict([_DEFAULT_TOKEN, _ROOM_PUBLISH])],
    ids=["room-first", "default-first"],
)
def test_a_namespace_takes_the_default_namespace_options_whatever_the_environment_order(
    environ: dict[str, str],
) -> None:
    table = load_settings(environ=environ).namespace_table()
    room = table.options_for(ChannelName("room:1"))
    assert (room.policy, room.client_publish) == (Policy.TOKEN, True)
    assert table.options_for(ChannelName("news")).policy is Policy.TOKEN
    # A built-in namespace keeps its own policy.
    assert table.options_for(ChannelName("user:1")).policy is Policy.USER


def test_a_namespace_of_the_file_takes_a_default_set_later_in_the_environment(
    tmp_path: Path,
) -> None:
    path = write(tmp_path, "[namespaces.room]\nclient_publish = true\n")
    settings = load_settings(path, {"TIDINGS_NAMESPACES__DEFAULT__HISTORY_SIZE": "7"})
    room = settings.namespace_table().options_for(ChannelName("room:1"))
    assert (room.client_publish, room.history.size) == (True, 7)


def test_the_environment_overrides_one_namespace_setting_and_keeps_the_files_others(
    tmp_path: Path,
) -> None:
    path = write(tmp_path, "[namespaces.room]\nclient_publish = true\nhistory_size = 9\n")
    settings = load_settings(path, {"TIDINGS_NAMESPACES__ROOM__HISTORY_SIZE": "3"})
    room = settings.namespace_table().options_for(ChannelName("room:1"))
    assert (room.client_publish, room.history.size) == (True, 3)


def test_connect_deadline_and_unauthenticated_allowance_have_safe_defaults_and_are_set() -> None:
    defaults = load_settings()
    assert (defaults.connect_timeout_s, defaults.max_unauthenticated_connections) == (10.0, 1000)
    assert defaults.max_unauthenticated_connections < defaults.max_connections
    settings = load_settings(
        environ={
            "TIDINGS_CONNECT_TIMEOUT": "3s",
            "TIDINGS_MAX_UNAUTHENTICATED_CONNECTIONS": "50",
        }
    )
    assert (settings.connect_timeout_s, settings.max_unauthenticated_connections) == (3.0, 50)


def test_sqlite_durability_is_full_unless_set_to_fast() -> None:
    assert load_settings().sqlite_durability == "full"
    fast = load_settings(environ={"TIDINGS_SQLITE_DURABILITY": "fast"})
    assert fast.sqlite_durability == "fast"
    with pytest.raises(ConfigError, match="sqlite_durability"):
        load_settings(environ={"TIDINGS_SQLITE_DURABILITY": "sometimes"})


def test_a_node_is_named_at_random_unless_node_id_is_set(tmp_path: Path) -> None:
    first, second = load_settings(), load_settings()
    named = load_settings(write(tmp_path, 'node_id = "east-1"'))
    by_environment = load_settings(environ={"TIDINGS_NODE_ID": "west_2"})
    assert first.node_id != second.node_id
    assert Settings().node_id != Settings().node_id
    assert (named.node_id, by_environment.node_id) == ("east-1", "west_2")


@pytest.mark.parametrize("node_id", ["", "a b", "east.1", "n:1", "x" * 65])
def test_a_node_id_that_could_not_name_a_node_is_refused(node_id: str) -> None:
    with pytest.raises(ConfigError, match="node_id"):
        load_settings(environ={"TIDINGS_NODE_ID": node_id})


def test_the_advertised_url_is_the_public_url_or_derived_from_host_and_port() -> None:
    assert Settings().advertised_url == "http://127.0.0.1:8000"
    assert Settings(host="::1", port=9000).advertised_url == "http://[::1]:9000"
    assert Settings(host="0.0.0.0", port=80).advertised_url == "http://127.0.0.1:80"
    public = load_settings(environ={"TIDINGS_PUBLIC_URL": "https://rt.example.com/tidings/"})
    assert public.public_url == "https://rt.example.com/tidings/"
    assert public.advertised_url == "https://rt.example.com/tidings"


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("ftp://rt.example.com", "http:// or https://"),
        ("rt.example.com:8000", "http:// or https://"),
        ("http://", "http:// or https://"),
        ("https://rt.example.com/?node=1", "no query"),
        ("https://rt.example.com/#top", "no query or fragment"),
        ("https://user:secret@rt.example.com", "credentials"),
        ("http://rt.example.com:99999", "not a valid URL"),
    ],
)
def test_a_public_url_peers_could_not_use_is_refused(url: str, complaint: str) -> None:
    with pytest.raises(ConfigError, match=f"public_url.*{complaint}|{complaint}"):
        load_settings(environ={"TIDINGS_PUBLIC_URL": url})


def test_a_brokers_table_is_read_from_the_file_and_the_environment_overrides_one_key(
    tmp_path: Path,
) -> None:
    path = write(tmp_path, '[brokers.redis]\nprefix = "app1"\ntrust_restarts = true\n')
    settings = load_settings(path, {"TIDINGS_BROKERS__REDIS__PREFIX": "app2"})
    assert settings.brokers == {"redis": {"prefix": "app2", "trust_restarts": True}}
    assert Settings().brokers == {}


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ('brokers = "redis"\n', "brokers must be a table of broker tables"),
        ('[brokers]\nredis = "x"\n', "brokers.redis must be a table"),
    ],
)
def test_a_brokers_setting_that_is_not_a_table_of_tables_is_refused(
    tmp_path: Path, text: str, complaint: str
) -> None:
    with pytest.raises(ConfigError, match=complaint):
        load_settings(write(tmp_path, text))


def test_a_static_ring_is_read_from_a_table_or_the_environment(tmp_path: Path) -> None:
    text = (
        'node_id = "a"\nplacement = "modulo"\nring_vnodes = 40\n'
        '[ring_nodes]\na = "http://10.0.0.1:8000"\nb = "https://b.example"\n'
    )
    settings = load_settings(write(tmp_path, text))
    assert settings.ring_nodes == {"a": "http://10.0.0.1:8000", "b": "https://b.example"}
    assert (settings.placement, settings.ring_vnodes) == ("modulo", 40)
    environment = load_settings(
        environ={"TIDINGS_NODE_ID": "b", "TIDINGS_RING_NODES": "a=http://a:1, b=http://b:2"}
    )
    assert environment.ring_nodes == {"a": "http://a:1", "b": "http://b:2"}
    assert (Settings().ring_nodes, Settings().placement, Settings().ring_vnodes) == (
        {},
        "ring",
        160,
    )


@pytest.mark.parametrize(
    ("environ", "complaint"),
    [
        ({"TIDINGS_RING_NODES": "a=http://a:1", "TIDINGS_NODE_ID": "c"}, "not in ring_nodes"),
        ({"TIDINGS_RING_NODES": "a"}, "node_id=url pairs"),
        ({"TIDINGS_RING_NODES": "a=ftp://a"}, r"ring_nodes\.a must be an http"),
        ({"TIDINGS_RING_NODES": "a b=http://a:1"}, "ring_nodes key must be 1 to 64"),
        ({"TIDINGS_PLACEMENT": "consistent"}, r"placement must be one of \['ring', 'modulo'\]"),
        ({"TIDINGS_RING_VNODES": "0"}, "ring_vnodes must be a whole number >= 1"),
        (
            {
                "TIDINGS_RING_NODES": "a=http://a:1",
                "TIDINGS_NODE_ID": "a",
                "TIDINGS_RING_ETCD": "http://e:2379",
            },
            "ring_nodes .* or ring_etcd .*, not both",
        ),
        (
            {"TIDINGS_RING_ETCD": "http://e:2379", "TIDINGS_RING_TTL": "1s"},
            "ring_ttl must be at least 2s",
        ),
        ({"TIDINGS_RING_ETCD": "e:2379"}, "ring_etcd must be an http"),
        ({"TIDINGS_RING_PREFIX": "tidings"}, "ring_prefix must be an etcd key prefix"),
    ],
)
def test_a_ring_no_node_could_serve_is_refused(environ: dict[str, str], complaint: str) -> None:
    with pytest.raises(ConfigError, match=complaint):
        load_settings(environ=environ)


def test_ring_etcd_names_one_or_several_etcd_members() -> None:
    one = load_settings(environ={"TIDINGS_RING_ETCD": "http://e:2379/"})
    assert one.ring_etcd == "http://e:2379"
    several = load_settings(environ={"TIDINGS_RING_ETCD": "http://e1:2379, https://e2:2379"})
    assert several.ring_etcd == "http://e1:2379,https://e2:2379"


def test_a_ring_etcd_broker_url_sets_membership_in_etcd_over_the_embedded_broker(
    tmp_path: Path,
) -> None:
    settings = load_settings(environ={"TIDINGS_BROKER": "ring+etcd://10.0.0.1:2379,10.0.0.2:2379"})
    assert settings.broker is None  # the node's own store: memory
    assert settings.ring_etcd == "http://10.0.0.1:2379,http://10.0.0.2:2379"
    assert (settings.ring_prefix, settings.ring_ttl_s) == ("/tidings/ring", 10.0)
    configured = load_settings(
        write(tmp_path, 'broker = "ring+etcd://127.0.0.1:2379?prefix=/app/ring&ttl=4s"\n')
    )
    assert configured.ring_etcd == "http://127.0.0.1:2379"
    assert (configured.ring_prefix, configured.ring_ttl_s) == ("/app/ring", 4.0)


@pytest.mark.parametrize(
    ("broker", "complaint"),
    [
        ("ring+etcd://", "no etcd client URL given"),
        ("ring+etcd://e:2379/path", "is not an etcd client URL"),
        ("ring+etcd://e:2379?ttl=1s", "ring_ttl must be at least 2s"),
        ("ring+etcd://e:2379?ttl=soon", "ttl"),
        ("ring+etcd://e:2379?prefix=ring", "must be an etcd key prefix"),
        ("ring+etcd://e:2379?lease=4s", "unknown option 'lease'; known: prefix, ttl"),
    ],
)
def test_a_bad_ring_etcd_broker_url_is_one_clear_line(broker: str, complaint: str) -> None:
    with pytest.raises(ConfigError, match=complaint) as raised:
        load_settings(environ={"TIDINGS_BROKER": broker})
    assert "\n" not in str(raised.value)


def test_a_ring_etcd_broker_url_and_ring_etcd_are_not_both_set() -> None:
    with pytest.raises(ConfigError, match="leave ring_etcd unset"):
        load_settings(
            environ={"TIDINGS_BROKER": "ring+etcd://e:2379", "TIDINGS_RING_ETCD": "http://f:1"}
        )
