"""The ``Settings`` a node runs with: every setting's field and default, the limits no
node can serve with (refused as the settings are built), and what derives from them.

No I/O (an unset ``node_id`` is random). Reading the settings from a file, the
environment and arguments is config.py's; docs/configuration.md describes each setting.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, Literal

from tidings.core.channel import NamespaceName
from tidings.core.namespace import NamespaceOptions, Namespaces, default_namespaces
from tidings.core.ring import DEFAULT_VNODES, OwnershipKind
from tidings.errors import ConfigError
from tidings.server.namespace_settings import DEFAULT_NAMESPACE_KEY
from tidings.server.settings_parsers import check_node_id, check_public_url
from tidings.sources.registry import SourceSettings

TransportName = Literal["ws", "sse", "poll"]
TRANSPORTS: Final[tuple[TransportName, ...]] = ("ws", "sse", "poll")
ServerBackend = Literal["native", "uvicorn"]
SERVER_BACKENDS: Final[tuple[ServerBackend, ...]] = ("native", "uvicorn")

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
    # when one reaches the deliveries/s threshold (0: never); rates over each window;
    # past a window's first publications, one in ``hot_channel_sampling`` of those with
    # few deliveries is counted (1: every one).
    hot_channels: bool = True
    hot_channel_deliveries_per_s: float = 10_000.0
    hot_channel_window_s: float = 10.0
    hot_channel_sampling: int = 16
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
    # How long a node gives each hand-over step of a ring transition (snapshots acked
    # and clients moved; then receivers caught up to the sealed tops; a held publication
    # waiting for the final ring): ``server.handover``.
    handover_timeout_s: float = 30.0
    # Whether a node with ``ring_etcd`` takes its place in the ring as it starts; false:
    # it only registers as a member and waits for ``tidings ring join``.
    ring_join: bool = True

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
