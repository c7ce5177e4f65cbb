"""Node configuration: defaults, a TOML file, ``TIDINGS_*`` environment variables, arguments.

Parsing only (reads the file it is given). Each setting has one name used everywhere:
``api_key`` in the file is ``TIDINGS_API_KEY`` in the environment and ``--api-key`` on
the command line. Later sources win: defaults < file < environment < arguments.
Namespaces are tables of the file (``[namespaces.room]``) or, in the environment,
``TIDINGS_NAMESPACES__ROOM__CLIENT_PUBLISH=true``; they are built once every source is
merged, so a namespace's options never depend on the order they were read in. The
publication sources of ``tidings.sources`` come from the file only, as an array of
tables (``[[sources]]``); a kind's own keys are its class's to check. Unknown
names are errors, so a typo never silently leaves a default in force; so are values that
would make the node refuse every client (a zero rate), and an empty secret.
"""

from __future__ import annotations

import math
import re
import secrets
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import urlsplit

from tidings.core.channel import DEFAULT_NAMESPACE, NamespaceName
from tidings.core.history import HistoryOptions
from tidings.core.namespace import NamespaceOptions, Namespaces, Policy, default_namespaces
from tidings.core.node_call import MIN_CLUSTER_SECRET_BYTES
from tidings.core.origin import is_loopback_host
from tidings.core.ring import DEFAULT_VNODES, OWNERSHIP_KINDS, OwnershipKind
from tidings.errors import ConfigError
from tidings.server.auth import check_hs256_secret
from tidings.server.keys import load_public_key
from tidings.server.units import parse_duration_s, parse_size_bytes
from tidings.sources.registry import SourceSettings, source_kind

ENV_PREFIX: Final = "TIDINGS_"
DEFAULT_NAMESPACE_KEY: Final = "default"
# Variables of the client commands (tidings subscribe, history...), not node settings:
# a shell that sets them for those may still run tidings serve.
CLIENT_VARIABLES: Final = frozenset({"TIDINGS_URL", "TIDINGS_TOKEN"})

TransportName = Literal["ws", "sse", "poll"]
TRANSPORTS: Final[tuple[TransportName, ...]] = ("ws", "sse", "poll")
ServerBackend = Literal["native", "uvicorn"]
SERVER_BACKENDS: Final[tuple[ServerBackend, ...]] = ("native", "uvicorn")


NODE_ID_PATTERN: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")
# A source's name appears in idempotency keys, metric labels, lock files and (PostgreSQL)
# a LISTEN channel and trigger name, which must stay under 63 bytes.
SOURCE_NAME_PATTERN: Final = re.compile(r"[a-z0-9_]{1,40}")
WILDCARD_HOSTS: Final = frozenset({"", "0.0.0.0", "::", "[::]"})
# Room in a WebSocket frame for everything but data: op, id, channel, key (docs/protocol.md §3).
FRAME_OVERHEAD_BYTES: Final = 4096
# Either server backend reads a WebSocket message up to this many frame limits before
# cutting it (1009): a frame the app refuses (4009, docs/protocol.md §3) still parses.
WS_MESSAGE_LIMIT_FACTOR: Final = 4


def new_node_id() -> str:
    """Return a random node id (what a node is called when ``node_id`` is not set)."""
    return secrets.token_hex(6)


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything a node is configured with. See docs/configuration.md for each setting."""

    host: str = "127.0.0.1"
    port: int = 8000
    data: str | None = None
    sqlite_durability: str = "full"
    broker: str | None = None
    api_key: str | None = None
    jwt_secret: str | None = None
    jwt_public_key: str | None = None
    jwt_jwks_url: str | None = None
    jwt_jwks_refresh_s: float = 300.0
    jwt_require_exp: bool = True
    allowed_origins: tuple[str, ...] = ()
    ping_interval_s: float = 25.0
    max_connections: int = 10_000
    max_unauthenticated_connections: int = 1_000
    connect_timeout_s: float = 10.0
    max_channels_per_connection: int = 128
    outbound_buffer_bytes: int = 1024 * 1024
    command_rate: float = 100.0
    command_burst: float = 200.0
    dedupe_window_s: float = 300.0
    poll_watches: int = 10_000
    shutdown_timeout_s: float = 5.0
    drain_window_s: float = 3.0
    drain_rate: float = 1000.0
    publish_timeout_s: float = 1.5
    # Hot channels (``core.channel_heat``): counted in the fan-out unless off; a warning
    # when one reaches the deliveries/s threshold (0: never); rates over each window.
    hot_channels: bool = True
    hot_channel_deliveries_per_s: float = 10_000.0
    hot_channel_window_s: float = 10.0
    # HAProxy's agent check answers on this TCP port (``server.load``); None: off.
    agent_port: int | None = None
    transports: tuple[TransportName, ...] = TRANSPORTS
    demo: bool = False
    access_log: bool = False
    server_backend: ServerBackend = "native"
    namespaces: Mapping[NamespaceName, NamespaceOptions] = field(default_factory=default_namespaces)
    allow_open_api: bool = False
    # This node's id among the nodes sharing a broker: in client ids, presence entries,
    # node commands and its status channel. Random per start unless set.
    node_id: str = field(default_factory=new_node_id)
    # The base URL clients and other nodes reach this node at; None: ``advertised_url``
    # derives it from host and port.
    public_url: str | None = None
    # A broker's own settings by broker name (``[brokers.redis]``), merged key by key
    # across sources; the chosen broker validates its table (``brokers.factory``).
    brokers: Mapping[str, Mapping[str, object]] = field(default_factory=dict)
    # The ``[[sources]]`` tables: publications fed from outside (``tidings.sources``).
    sources: tuple[SourceSettings, ...] = ()
    # Owner routing (docs/modes/hashing.md): each node id of the ring and its base URL;
    # empty: every channel is served on every node. ``placement`` chooses how keys are
    # shared among them (the ring, or modulo hashing to compare it with).
    ring_nodes: Mapping[str, str] = field(default_factory=dict)
    placement: OwnershipKind = "ring"
    ring_vnodes: int = DEFAULT_VNODES
    # Or the ring's membership in etcd (brokers/ring/membership.py): its client URL, the
    # key prefix the ring's nodes share, and how long a silent node stays a member.
    ring_etcd: str | None = None
    ring_prefix: str = "/tidings/ring"
    ring_ttl_s: float = 10.0
    # The secret every node of a ring shares, signing the server API calls one forwards
    # to a channel's owner (``core.node_call``); at least 32 bytes.
    cluster_secret: str | None = None
    # How many WebSocket clients a node tells to reconnect per second when a new ring
    # sends their keys to another node (``server.ring_moves``).
    ring_move_rate: float = 200.0

    def __post_init__(self) -> None:
        _check_limits(self)
        check_node_id("node_id", self.node_id)
        if self.public_url is not None:
            check_public_url("public_url", self.public_url)

    @property
    def advertised_url(self) -> str:
        """The base URL of this node: ``public_url``, or ``http://host:port`` (a wildcard
        host, which no peer can dial, as ``127.0.0.1``)."""
        if self.public_url is not None:
            return self.public_url.rstrip("/")
        host = "127.0.0.1" if self.host in WILDCARD_HOSTS else self.host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"  # an IPv6 address
        return f"http://{host}:{self.port}"

    def namespace_table(self) -> Namespaces:
        """Return the namespace lookup of these settings."""
        return Namespaces(self.namespaces)

    @property
    def max_data_bytes(self) -> int:
        """The largest ``data`` any namespace accepts (bounds a WebSocket frame)."""
        return max(options.max_data_bytes for options in self.namespaces.values())

    @property
    def max_frame_bytes(self) -> int:
        """The largest WebSocket frame a session accepts: the largest ``data`` plus room
        for the envelope (docs/protocol.md §3); a larger one closes the connection with 4009."""
        return self.max_data_bytes + FRAME_OVERHEAD_BYTES

    @property
    def max_ws_message_bytes(self) -> int:
        """The largest WebSocket message either server backend reads (native and uvicorn
        alike); past it the connection is closed with 1009."""
        return self.max_frame_bytes * WS_MESSAGE_LIMIT_FACTOR


def check_node_id(name: str, value: str) -> str:
    """Return ``value`` if it can name a node: 1-64 of A-Z a-z 0-9 _ - (it appears in
    client ids, channel names and Redis client names).

    Raises:
        ConfigError: it cannot.
    """
    if NODE_ID_PATTERN.fullmatch(value) is None:
        raise ConfigError(f"{name} must be 1 to 64 of A-Z a-z 0-9 _ -, got {value!r}")
    return value


def check_public_url(name: str, value: str) -> str:
    """Return ``value`` if it is a base URL peers can reach: http or https, with a host,
    and no query, fragment or credentials.

    Raises:
        ConfigError: it is not.
    """
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018  (raises ValueError on a bad port)
    except ValueError:
        raise ConfigError(f"{name} is not a valid URL, got {value!r}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{name} must be an http:// or https:// URL with a host, got {value!r}")
    if parts.query or parts.fragment or "?" in value or "#" in value:
        raise ConfigError(f"{name} must have no query or fragment, got {value!r}")
    if parts.username is not None or parts.password is not None:
        raise ConfigError(f"{name} must not hold credentials, got {value!r}")
    return value


def _as_ring_nodes(name: str, value: object) -> dict[str, str]:
    """``{node_id = "base URL"}`` (a TOML table), or ``id=url,id=url`` (the environment)."""
    if isinstance(value, str):
        pairs = [part.strip().partition("=") for part in value.split(",") if part.strip()]
        if any(not sep for _, sep, _ in pairs):
            raise ConfigError(f"{name} must be node_id=url pairs separated by commas")
        value = {node.strip(): url.strip() for node, _, url in pairs}
    if not isinstance(value, Mapping):
        raise ConfigError(f'{name} must be a table such as {{a = "http://10.0.0.1:8000"}}')
    return {
        check_node_id(f"{name} key", _as_str(name, node)): check_public_url(
            f"{name}.{node}", _as_str(f"{name}.{node}", url)
        )
        for node, url in value.items()
    }


def _as_ring_prefix(name: str, value: object) -> str:
    text = _as_str(name, value)
    if not text.startswith("/") or len(text) < 2:
        raise ConfigError(f"{name} must be an etcd key prefix such as /tidings/ring, got {text!r}")
    return text


def _as_ownership(name: str, value: object) -> OwnershipKind:
    for kind in OWNERSHIP_KINDS:
        if value == kind:
            return kind
    raise ConfigError(f"{name} must be one of {list(OWNERSHIP_KINDS)}, got {value!r}")


def _as_str(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{name} must be a string, got {value!r}")
    return value


def _as_optional_str(name: str, value: object) -> str | None:
    text = _as_str(name, value)
    return text or None


def _as_secret(name: str, value: object) -> str:
    """A key or secret: set to something, or not set at all (an empty one is a mistake)."""
    text = _as_str(name, value)
    if not text.strip():
        raise ConfigError(
            f"{name} is empty: set it to a secret value, or leave it out entirely "
            f"(an empty {name} is not read as unset)"
        )
    return text


def _as_api_key(name: str, value: object) -> str:
    key = _as_secret(name, value)
    if key != key.strip():
        # A presented bearer token is stripped (transports/http.py): it could never match.
        raise ConfigError(f"{name} starts or ends with whitespace, which no caller can send")
    return key


def _as_int(name: str, value: object) -> int:
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{name} must be a whole number >= 0, got {value!r}")
    return value


def _as_count(name: str, value: object) -> int:
    number = _as_int(name, value)
    if number < 1:
        raise ConfigError(f"{name} must be a whole number >= 1, got {value!r}")
    return number


def _as_float(name: str, value: object) -> float:
    try:
        number = float(value) if isinstance(value, str | int | float) else float("nan")
    except ValueError:
        number = float("nan")
    if isinstance(value, bool) or not number >= 0:
        raise ConfigError(f"{name} must be a number >= 0, got {value!r}")
    return number


def _as_bool(name: str, value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in {
        "true",
        "1",
        "yes",
        "on",
        "false",
        "0",
        "no",
        "off",
    }:
        return value.lower() in {"true", "1", "yes", "on"}
    raise ConfigError(f"{name} must be true or false, got {value!r}")


def _as_origins(name: str, value: object) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(origin.strip() for origin in value.split(",") if origin.strip())
    if isinstance(value, list) and all(isinstance(origin, str) for origin in value):
        return tuple(value)
    raise ConfigError(f'{name} must be a list of origins such as ["https://app.example.com"]')


def _as_transports(name: str, value: object) -> tuple[TransportName, ...]:
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, list) or not all(isinstance(part, str) for part in value):
        raise ConfigError(f'{name} must be a list of transports such as ["sse", "poll"]')
    unknown = [part for part in value if part not in TRANSPORTS]
    if unknown or not value:
        raise ConfigError(f"{name} must name at least one of {list(TRANSPORTS)}, got {value!r}")
    return tuple(transport for transport in TRANSPORTS if transport in value)


def _as_choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ConfigError(f"{name} must be one of {list(choices)}, got {value!r}")
    return str(value)


def _as_server_backend(name: str, value: object) -> ServerBackend:
    for backend in SERVER_BACKENDS:
        if value == backend:
            return backend
    raise ConfigError(f"{name} must be one of {list(SERVER_BACKENDS)}, got {value!r}")


# Limits below which a node refuses or cuts every client (a zero command rate answered
# every WebSocket handshake with 500): (name, Settings field, smallest value allowed).
_AT_LEAST: Final = (
    ("port", "port", 0),
    ("max_connections", "max_connections", 1),
    ("max_channels_per_connection", "max_channels_per_connection", 1),
    ("outbound_buffer", "outbound_buffer_bytes", 1),
    ("command_burst", "command_burst", 1),
)
# Limits that must be more than 0 (any fraction will do).
_MORE_THAN_ZERO: Final = (
    ("command_rate", "command_rate"),
    ("ping_interval", "ping_interval_s"),
    ("publish_timeout", "publish_timeout_s"),
    ("hot_channel_window", "hot_channel_window_s"),
)
MAX_PORT: Final = 65_535


def _check_limits(settings: Settings) -> None:
    """Refuse limits no node can serve with (``Settings`` runs this as it is built)."""
    for name, attribute, low in _AT_LEAST:
        value = getattr(settings, attribute)
        if value < low:
            raise ConfigError(f"{name} must be at least {low}, got {value:g}")
    for name, attribute in _MORE_THAN_ZERO:
        value = getattr(settings, attribute)
        if not value > 0:
            raise ConfigError(f"{name} must be more than 0, got {value:g}")
    if not 0 < settings.drain_rate < math.inf:
        raise ConfigError(
            f"drain_rate must be reconnects per second above 0, got {settings.drain_rate:g}"
        )
    if settings.port > MAX_PORT:
        raise ConfigError(f"port must be from 0 to {MAX_PORT}, got {settings.port}")
    if settings.agent_port is not None and not 1 <= settings.agent_port <= MAX_PORT:
        raise ConfigError(
            f"agent_port must be from 1 to {MAX_PORT} (leave it out to turn the agent "
            f"check off), got {settings.agent_port}"
        )
    if settings.agent_port is not None and settings.agent_port == settings.port:
        raise ConfigError(
            f"agent_port must differ from port ({settings.port}): HAProxy's agent check "
            "needs a port of its own"
        )
    for name, options in settings.namespaces.items():
        if options.max_data_bytes < 1:
            key = name or DEFAULT_NAMESPACE_KEY
            raise ConfigError(f"namespaces.{key}.max_data_size must be at least 1 byte, got 0")


_PARSERS: Final[dict[str, Callable[[str, object], Any]]] = {
    "host": _as_str,
    "port": _as_int,
    "data": _as_optional_str,
    "sqlite_durability": lambda name, value: _as_choice(name, value, ("full", "fast")),
    "broker": _as_optional_str,
    "api_key": _as_api_key,
    "jwt_secret": _as_secret,
    "jwt_public_key": _as_optional_str,
    "jwt_jwks_url": _as_optional_str,
    "jwt_jwks_refresh": parse_duration_s,
    "jwt_require_exp": _as_bool,
    "allowed_origins": _as_origins,
    "ping_interval": parse_duration_s,
    "max_connections": _as_int,
    "max_unauthenticated_connections": _as_int,
    "connect_timeout": parse_duration_s,
    "max_channels_per_connection": _as_int,
    "outbound_buffer": parse_size_bytes,
    "command_rate": _as_float,
    "command_burst": _as_float,
    "dedupe_window": parse_duration_s,
    "poll_watches": _as_count,
    "shutdown_timeout": parse_duration_s,
    "drain_window": parse_duration_s,
    "drain_rate": _as_float,
    "publish_timeout": parse_duration_s,
    "hot_channels": _as_bool,
    "hot_channel_deliveries_per_s": _as_float,
    "hot_channel_window": parse_duration_s,
    "agent_port": _as_int,
    "transports": _as_transports,
    "demo": _as_bool,
    "access_log": _as_bool,
    "server_backend": _as_server_backend,
    "allow_open_api": _as_bool,
    "node_id": lambda name, value: check_node_id(name, _as_str(name, value)),
    "public_url": lambda name, value: check_public_url(name, _as_str(name, value)),
    "ring_nodes": _as_ring_nodes,
    "placement": _as_ownership,
    "ring_vnodes": _as_count,
    "ring_etcd": lambda name, value: check_public_url(name, _as_str(name, value)),
    "ring_prefix": _as_ring_prefix,
    "ring_ttl": parse_duration_s,
    "cluster_secret": _as_secret,
    "ring_move_rate": _as_float,
}
# Settings fields whose configuration name drops the unit suffix.
_FIELD_OF: Final = {
    "ring_ttl": "ring_ttl_s",
    "ping_interval": "ping_interval_s",
    "outbound_buffer": "outbound_buffer_bytes",
    "dedupe_window": "dedupe_window_s",
    "shutdown_timeout": "shutdown_timeout_s",
    "jwt_jwks_refresh": "jwt_jwks_refresh_s",
    "drain_window": "drain_window_s",
    "publish_timeout": "publish_timeout_s",
    "connect_timeout": "connect_timeout_s",
    "hot_channel_window": "hot_channel_window_s",
}
_SETTING_OF_FIELD: Final = {field_name: name for name, field_name in _FIELD_OF.items()}


def setting_name(field_name: str) -> str:
    """Return the configuration name of a ``Settings`` field (``ping_interval_s`` is
    ``ping_interval``)."""
    return _SETTING_OF_FIELD.get(field_name, field_name)


_NAMESPACE_KEYS: Final = (
    "policy",
    "client_publish",
    "presence",
    "history_size",
    "history_ttl",
    "max_data_size",
)


def _namespace_options(
    name: str, table: Mapping[str, object], base: NamespaceOptions
) -> NamespaceOptions:
    unknown = sorted(set(table) - set(_NAMESPACE_KEYS))
    if unknown:
        raise ConfigError(
            f"namespace {name!r} has unknown settings {unknown}; known: {list(_NAMESPACE_KEYS)}"
        )
    options = base
    where = f"namespaces.{name}"
    if "policy" in table:
        value = table["policy"]
        try:
            options = replace(options, policy=Policy(value))
        except ValueError:
            raise ConfigError(
                f"{where}.policy is {value!r}; expected one of {[p.value for p in Policy]}"
            ) from None
    if "client_publish" in table:
        options = replace(
            options, client_publish=_as_bool(f"{where}.client_publish", table["client_publish"])
        )
    if "presence" in table:
        options = replace(options, presence=_as_bool(f"{where}.presence", table["presence"]))
    if "max_data_size" in table:
        size = parse_size_bytes(f"{where}.max_data_size", table["max_data_size"])
        options = replace(options, max_data_bytes=size)
    history = options.history
    if "history_size" in table:
        history = HistoryOptions(
            _as_int(f"{where}.history_size", table["history_size"]), history.ttl_ms
        )
    if "history_ttl" in table:
        ttl_s = parse_duration_s(f"{where}.history_ttl", table["history_ttl"])
        if ttl_s <= 0:
            raise ConfigError(f"{where}.history_ttl must be more than 0")
        history = HistoryOptions(history.size, int(ttl_s * 1000))
    return replace(options, history=history)


NamespaceTables = dict[str, dict[str, object]]


def _apply(
    settings: Settings, values: Mapping[str, object], source: str, tables: NamespaceTables
) -> Settings:
    """Apply one source's settings; merge its namespace tables into ``tables`` (a later
    source's value of a namespace setting wins), to be built once all are read."""
    changes: dict[str, Any] = {}
    for name, value in values.items():
        if name == "namespaces":
            if not isinstance(value, Mapping):
                raise ConfigError(f"{source}: namespaces must be a table of namespace tables")
            for ns_name, table in value.items():
                if not isinstance(table, Mapping):
                    raise ConfigError(f"{source}: namespaces.{ns_name} must be a table")
                tables.setdefault(ns_name, {}).update(table)
            continue
        if name == "brokers":
            changes["brokers"] = _merge_broker_tables(
                changes.get("brokers", settings.brokers), value, source
            )
            continue
        if name == "sources":
            changes["sources"] = parse_sources(value, source)
            continue
        parser = _PARSERS.get(name)
        if parser is None:
            raise ConfigError(
                f"{source}: unknown setting {name!r}; "
                f"known: {sorted([*_PARSERS, 'namespaces', 'brokers', 'sources'])}"
            )
        changes[_FIELD_OF.get(name, name)] = parser(name, value)
    return replace(settings, **changes)


def _merge_broker_tables(
    tables: Mapping[str, Mapping[str, object]], value: object, source: str
) -> dict[str, dict[str, object]]:
    """Return ``tables`` with ``value``'s broker tables merged in, key by key (its keys
    win). What the keys mean is the chosen broker's to check, when it is made."""
    if not isinstance(value, Mapping):
        raise ConfigError(f"{source}: brokers must be a table of broker tables")
    merged = {name: dict(table) for name, table in tables.items()}
    for broker_name, table in value.items():
        if not isinstance(table, Mapping):
            raise ConfigError(f"{source}: brokers.{broker_name} must be a table")
        merged.setdefault(broker_name, {}).update(table)
    return merged


def parse_sources(value: object, source: str) -> tuple[SourceSettings, ...]:
    """Return the ``[[sources]]`` array of tables: each a ``name`` (unique), a known
    ``kind``, and the kind's own keys (checked when the source is made).

    Raises:
        ConfigError: not an array of tables, a missing or repeated name, an unknown kind.
    """
    if not isinstance(value, list) or not all(isinstance(table, Mapping) for table in value):
        raise ConfigError(
            f"{source}: sources must be an array of tables ([[sources]] in the config file)"
        )
    parsed: list[SourceSettings] = []
    for number, table in enumerate(value, 1):
        name = table.get("name")
        if not isinstance(name, str) or SOURCE_NAME_PATTERN.fullmatch(name) is None:
            raise ConfigError(
                f"{source}: source #{number} needs a name of 1 to 40 of a-z 0-9 _, got {name!r}"
            )
        if any(earlier.name == name for earlier in parsed):
            raise ConfigError(f"{source}: two sources are named {name!r}")
        kind = table.get("kind")
        source_kind(name, kind)
        options = {key: item for key, item in table.items() if key not in ("name", "kind")}
        parsed.append(SourceSettings(name, str(kind), options))
    return tuple(parsed)


def _build_namespaces(tables: NamespaceTables) -> dict[NamespaceName, NamespaceOptions]:
    """Build every namespace from the merged tables of all sources.

    The default namespace first: every other namespace starts from it (or, for a
    built-in one such as ``user``, from its built-in options), whatever order the
    tables or environment variables came in.
    """
    namespaces = default_namespaces()
    default_table = tables.get(DEFAULT_NAMESPACE_KEY)
    if default_table is not None:
        namespaces[DEFAULT_NAMESPACE] = _namespace_options(
            DEFAULT_NAMESPACE_KEY, default_table, namespaces[DEFAULT_NAMESPACE]
        )
    for ns_name, table in tables.items():
        if ns_name == DEFAULT_NAMESPACE_KEY:
            continue
        key = NamespaceName(ns_name)
        base = namespaces.get(key, namespaces[DEFAULT_NAMESPACE])
        namespaces[key] = _namespace_options(ns_name, table, base)
    return namespaces


def _env_values(environ: Mapping[str, str]) -> dict[str, object]:
    values: dict[str, object] = {}
    for variable, value in environ.items():
        if not variable.startswith(ENV_PREFIX) or variable in CLIENT_VARIABLES:
            continue
        path = variable[len(ENV_PREFIX) :].lower().split("__")
        if path[0] in ("namespaces", "brokers") and len(path) == 3:
            tables = values.setdefault(path[0], {})
            assert isinstance(tables, dict)
            tables.setdefault(path[1], {})[path[2]] = value
        elif len(path) == 1:
            values[path[0]] = value
        else:
            raise ConfigError(
                f"{variable}: nested names take the form TIDINGS_NAMESPACES__<NAME>__<SETTING> "
                "or TIDINGS_BROKERS__<BROKER>__<SETTING>"
            )
    return values


def _check_open_api(settings: Settings) -> None:
    """Refuse to serve the server API without a key beyond this machine, unless asked."""
    is_open = settings.api_key is None and not settings.allow_open_api
    if is_open and not is_loopback_host(settings.host):
        raise ConfigError(
            f"host {settings.host!r} is not a loopback address and no api_key is set: "
            "anyone who reaches the node could publish and disconnect users; set api_key "
            "(TIDINGS_API_KEY), or allow_open_api = true to serve the API open on purpose"
        )


def load_settings(
    config_file: Path | None = None,
    environ: Mapping[str, str] | None = None,
    arguments: Mapping[str, object] | None = None,
) -> Settings:
    """Build the settings from defaults, a TOML file, the environment and arguments.

    Args:
        config_file: a TOML file, or ``None``.
        environ: the environment (``TIDINGS_*`` variables are read), or ``None``.
        arguments: settings given on the command line (``None`` values are ignored).

    Raises:
        ConfigError: a file that cannot be read or parsed, an unknown setting, a value
            of the wrong form or out of range (a zero ``command_rate``), an empty
            ``api_key`` or ``jwt_secret``, or an open server API (no ``api_key``) bound
            beyond loopback without ``allow_open_api``; the message names the setting
            and what is accepted.
    """
    settings = Settings()
    tables: NamespaceTables = {}
    if config_file is not None:
        try:
            with config_file.open("rb") as file:
                table = tomllib.load(file)
        except OSError as exc:
            raise ConfigError(f"cannot read config file {config_file}: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {config_file} is not valid TOML: {exc}") from exc
        settings = _apply(settings, table, str(config_file), tables)
    if environ is not None:
        settings = _apply(settings, _env_values(environ), "environment", tables)
    if arguments:
        given = {name: value for name, value in arguments.items() if value is not None}
        settings = _apply(settings, given, "arguments", tables)
    settings = replace(settings, namespaces=_build_namespaces(tables))
    _check_open_api(settings)
    _check_token_keys(settings)
    check_ring(settings)
    return settings


def check_ring(settings: Settings) -> None:
    """Refuse a ring this node is not part of (it would send every client away).

    Raises:
        ConfigError: ``ring_nodes`` is set and does not name ``node_id``.
    """
    nodes = settings.ring_nodes
    if nodes and settings.ring_etcd is not None:
        raise ConfigError(
            "set ring_nodes (a static ring) or ring_etcd (membership in etcd), not both"
        )
    if settings.ring_etcd is not None and settings.ring_ttl_s < 2:
        raise ConfigError(f"ring_ttl must be at least 2s, got {settings.ring_ttl_s:g}s")
    secret = settings.cluster_secret
    if secret is not None and len(secret.encode()) < MIN_CLUSTER_SECRET_BYTES:
        raise ConfigError(
            f"cluster_secret is {len(secret.encode())} bytes; it needs at least "
            f"{MIN_CLUSTER_SECRET_BYTES}: python -c 'import secrets; "
            "print(secrets.token_urlsafe(32))'"
        )
    if settings.ring_move_rate <= 0:
        raise ConfigError(f"ring_move_rate must be more than 0, got {settings.ring_move_rate:g}")
    if nodes and settings.node_id not in nodes:
        raise ConfigError(
            f"node_id {settings.node_id!r} is not in ring_nodes {sorted(nodes)}: "
            "set node_id to this node's entry"
        )


def _check_token_keys(settings: Settings) -> None:
    """Refuse at start what would refuse every token later: a short HS256 secret, an
    unreadable public key, two public key sources, a JWKS URL that is not HTTP."""
    if settings.jwt_secret is not None:
        check_hs256_secret(settings.jwt_secret)
    if settings.jwt_public_key is not None:
        if settings.jwt_jwks_url is not None:
            raise ConfigError("set jwt_public_key or jwt_jwks_url, not both")
        load_public_key(settings.jwt_public_key)
    url = settings.jwt_jwks_url
    if url is not None and not url.startswith(("https://", "http://")):
        raise ConfigError(f"jwt_jwks_url must be an http(s) URL, got {url!r}")
    if settings.jwt_jwks_refresh_s <= 0:
        raise ConfigError("jwt_jwks_refresh must be more than 0")
