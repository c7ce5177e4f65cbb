"""Choosing a broker from configuration, by the scheme of its URL, and handing it its
own settings.

A broker's settings come from its URL's query (``?prefix=``) and from its table in the
configuration file (``[brokers.redis]``, passed as ``options``); the URL wins where both
set one. The broker class validates them when it is made, refusing an unknown key with
one line, and does no I/O then, so ``check_broker`` can make one to check them.

Each backend module is imported only when chosen, so a backend's optional dependency
(redis, psycopg) is needed only by the nodes that use it; a missing one is
reported with the ``pip install`` line that adds it. The only I/O is checking that the
sqlite broker's directory can be used (``check_data_directory``), so that a node
refuses to start with one clear line instead of failing once it has started.

Adding a broker takes one module and two lines. The module holds a class made as
``Class(url, namespaces, *, dedupe, publish_timeout_s, node_id, options)`` (checking
its URL and ``options`` without I/O) that implements ``base.Broker``; if its nodes share
presence, a ``presence_store`` property returning its ``base.PresenceStore`` (without
one, each node keeps presence to itself); if they share commands, ``base.NodeControl``'s
``listen`` and ``send_to_nodes``. The lines: its ``BrokerKind`` in ``BROKER_SCHEMES``
(one per URL scheme), and its factory in the contract suite's ``BROKER_FACTORIES``
(tests/brokers/test_contract.py), which then holds it to every guarantee.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

from tidings.brokers.base import Broker
from tidings.brokers.data_dir import create_private_directory
from tidings.brokers.memory import MemoryBroker
from tidings.core.dedupe import DedupeOptions
from tidings.core.namespace import Namespaces
from tidings.errors import ConfigError


class _RemoteBroker(Protocol):
    def __call__(
        self,
        url: str,
        namespaces: Namespaces,
        *,
        dedupe: DedupeOptions,
        publish_timeout_s: float = ...,
        node_id: str | None = ...,
        options: Mapping[str, object] | None = ...,
    ) -> Broker: ...


@dataclass(frozen=True, slots=True)
class BrokerKind:
    """A broker reachable by URL: its name (of its ``[brokers.<name>]`` table), where its
    class lives and the extra that installs its dependency."""

    name: str
    module: str
    class_name: str
    extra: str
    dependency: str  # the top-level module the extra installs
    forms: tuple[str, ...] = ()  # its URL forms, as an unknown broker's error lists them
    more_dependencies: tuple[str, ...] = ()  # other top-level modules the extra installs


_REDIS: Final = BrokerKind(
    "redis",
    "tidings.brokers.redis",
    "RedisBroker",
    "redis",
    "redis",
    ("redis://host:port/db", "redis-cluster://host:port"),
)
_POSTGRES: Final = BrokerKind(
    "postgres",
    "tidings.brokers.postgres",
    "PostgresBroker",
    "postgres",
    "psycopg",
    ("postgres://user@host:port/db",),
    ("psycopg_pool",),
)
_NATS: Final = BrokerKind(
    "nats", "tidings.brokers.nats", "NatsBroker", "nats", "nats", ("nats://host:port",)
)
# Its link and API client (websockets, httpx) are core dependencies: never missing.
_RELAY: Final = BrokerKind(
    "relay",
    "tidings.brokers.relay",
    "RelayBroker",
    "",
    "websockets",
    ("relay+ws://host:port", "relay+http://host:port"),
)
# URL scheme -> broker. Add a broker here, not with another ``if``.
BROKER_SCHEMES: Final[dict[str, BrokerKind]] = {
    "redis": _REDIS,
    "rediss": _REDIS,
    "unix": _REDIS,
    "redis-cluster": _REDIS,
    "postgres": _POSTGRES,
    "postgresql": _POSTGRES,
    "nats": _NATS,
    "relay+ws": _RELAY,
    "relay+wss": _RELAY,
    "relay+http": _RELAY,
    "relay+https": _RELAY,
}
# ``ring+etcd://`` is no broker of its own: the settings read it as membership of the
# hash ring in etcd, over the embedded broker (``server.ring_settings.with_ring_broker``).
_FORMS: Final = [
    "memory",
    *dict.fromkeys(f for k in BROKER_SCHEMES.values() for f in k.forms),
    "ring+etcd://host:port[,host:port...]",
]
_KNOWN_FORMS: Final = f"{', '.join(_FORMS[:-1])} or {_FORMS[-1]}"
# The embedded brokers, chosen without a URL; their settings are top-level ones.
_LOCAL_NAMES: Final = ("memory", "sqlite")

BrokerTables = Mapping[str, Mapping[str, object]]


class UnknownBroker(ConfigError):
    """The broker URL's scheme is not one tidings knows."""

    def __init__(self, url: str) -> None:
        super().__init__(f"broker {url!r} is not one tidings knows: use {_KNOWN_FORMS}")
        self.url = url


class MissingExtra(ConfigError):
    """The chosen broker's optional dependency is not installed."""

    def __init__(self, url: str, extra: str, dependency: str) -> None:
        super().__init__(
            f"broker {url!r} needs the {dependency!r} package, which is not installed: "
            f"pip install 'tidings[{extra}]'"
        )
        self.url = url
        self.extra = extra
        self.dependency = dependency


class UnusableDataDirectory(ConfigError):
    """The sqlite broker's directory cannot be created, or written in."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"data directory {str(path)!r} cannot be used: {reason}")
        self.path = path
        self.reason = reason


def _scheme(url: str) -> str:
    return url.partition("://")[0].lower() if "://" in url else ""


def _broker_class(url: str) -> _RemoteBroker:
    """Return the class serving ``url``, importing its module.

    Raises:
        UnknownBroker: no broker has the URL's scheme.
        MissingExtra: the broker's optional dependency is not installed.
    """
    kind = BROKER_SCHEMES.get(_scheme(url))
    if kind is None:
        raise UnknownBroker(url)
    try:
        module = importlib.import_module(kind.module)
    except ImportError as exc:
        # Only the extra's own package is a user's mistake; any other ImportError is a bug.
        if exc.name is None or exc.name.split(".")[0] not in (
            kind.dependency,
            *kind.more_dependencies,
        ):
            raise
        raise MissingExtra(url, kind.extra, kind.dependency) from None
    broker_class: _RemoteBroker = getattr(module, kind.class_name)
    return broker_class


def check_data_directory(data: str | Path) -> Path:
    """Create the sqlite broker's directory if missing and check it can be written in.

    Returns:
        The directory.

    Raises:
        UnusableDataDirectory: it is a file, cannot be created, or is not writable.
    """
    path = Path(data)
    if path.exists() and not path.is_dir():
        raise UnusableDataDirectory(path, "it is not a directory")
    try:
        create_private_directory(path)  # the sqlite broker keeps every history here
    except OSError as exc:
        raise UnusableDataDirectory(path, (exc.strerror or str(exc)).lower()) from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise UnusableDataDirectory(path, "this user may not write in it")
    return path


def _options_for(name: str, options: BrokerTables | None) -> Mapping[str, object]:
    """Return the ``[brokers.<name>]`` table of ``options``, refusing a table that names
    no broker (a typo would otherwise be ignored)."""
    options = options or {}
    known = sorted({*_LOCAL_NAMES, *(kind.name for kind in BROKER_SCHEMES.values())})
    for table_name in options:
        if table_name not in known:
            raise ConfigError(
                f"brokers.{table_name}: no broker is called {table_name!r}; known: {known}"
            )
    table = options.get(name, {})
    if name in _LOCAL_NAMES and table:
        raise ConfigError(
            f"brokers.{name}.{next(iter(table))}: the {name} broker has no settings of its "
            "own (sqlite_durability is a top-level setting)"
        )
    return table


def check_broker(
    broker: str | None, data: str | Path | None, options: BrokerTables | None = None
) -> None:
    """Check that ``create_broker`` can make this broker, with its settings in
    ``options``, without starting it.

    Raises:
        UnknownBroker, MissingExtra, UnusableDataDirectory, ConfigError: see
            ``create_broker``.
    """
    if broker in (None, "", "memory"):
        _options_for("memory" if data is None else "sqlite", options)
        if data is not None:
            check_data_directory(data)
        return
    assert broker is not None
    if data is not None:
        raise ConfigError("data (the sqlite directory) applies only to the embedded broker")
    broker_class = _broker_class(broker)
    table = _options_for(BROKER_SCHEMES[_scheme(broker)].name, options)
    # Making a broker checks its URL and settings and does no I/O (module docstring).
    broker_class(broker, Namespaces(), dedupe=DedupeOptions(), options=table)


def create_broker(
    broker: str | None,
    data: str | Path | None,
    namespaces: Namespaces,
    dedupe: DedupeOptions,
    *,
    publish_timeout_s: float | None = None,
    sqlite_durability: str = "full",
    node_id: str | None = None,
    options: BrokerTables | None = None,
) -> Broker:
    """Return the broker named by ``broker`` (a URL) or, without one, by ``data``.

    ``redis://host:port/db`` (also ``rediss://``, ``unix://``) is the Redis broker,
    ``redis-cluster://host:port`` the Redis Cluster one, ``postgres://user@host:port/db``
    (also ``postgresql://``) the PostgreSQL one, ``nats://host:port`` the NATS one;
    ``relay+ws://host:port`` (``relay+wss``, ``relay+http``, ``relay+https``) a relay
    of another tidings node; ``memory`` or nothing is the
    memory broker, or the sqlite broker keeping its files in ``data`` if given, with
    ``sqlite_durability`` (``full`` or ``fast``, see ``brokers.sqlite``).
    ``publish_timeout_s`` bounds a remote broker's publish (see ``RedisBroker``); the
    local ones wait on no network. ``node_id`` names this node to a remote broker's
    other nodes (random if ``None``). ``options`` holds each broker's table of
    settings by broker name (``{"redis": {"prefix": "app"}}``); the chosen one's is
    handed to it, and its URL's query parameters win over it.

    Raises:
        UnknownBroker: a broker URL of no known scheme.
        MissingExtra: the broker's optional dependency is not installed.
        UnusableDataDirectory: ``data`` cannot be created or written in.
        ConfigError: ``data`` given with a remote broker, a table of a broker tidings
            does not know, or settings the broker refuses.
    """
    check_broker(broker, data, options)
    if broker in (None, "", "memory"):
        if data is None:
            return MemoryBroker(namespaces, dedupe=dedupe)
        from tidings.brokers.sqlite import (  # noqa: PLC0415  (see module docstring)
            DURABILITIES,
            SqliteBroker,
        )

        for durability in DURABILITIES:
            if durability == sqlite_durability:
                return SqliteBroker(data, namespaces, dedupe=dedupe, durability=durability)
        raise ConfigError(
            f"sqlite_durability must be one of {list(DURABILITIES)}, got {sqlite_durability!r}"
        )
    assert broker is not None
    broker_class = _broker_class(broker)
    kind = BROKER_SCHEMES[_scheme(broker)]
    table = _options_for(kind.name, options)
    if publish_timeout_s is None:
        return broker_class(broker, namespaces, dedupe=dedupe, node_id=node_id, options=table)
    return broker_class(
        broker,
        namespaces,
        dedupe=dedupe,
        publish_timeout_s=publish_timeout_s,
        node_id=node_id,
        options=table,
    )
