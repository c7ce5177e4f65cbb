"""Choosing a broker from configuration, by the scheme of its URL.

Each backend module is imported only when chosen, so a backend's optional dependency
(redis, nats, asyncpg) is needed only by the nodes that use it; a missing one is
reported with the ``pip install`` line that adds it. The only I/O is checking that the
sqlite broker's directory can be used (``check_data_directory``), so that a node
refuses to start with one clear line instead of failing once it has started.
"""

from __future__ import annotations

import importlib
import os
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
    ) -> Broker: ...


@dataclass(frozen=True, slots=True)
class BrokerKind:
    """A broker reachable by URL: where its class lives and the extra that installs
    its dependency."""

    module: str
    class_name: str
    extra: str
    dependency: str  # the top-level module the extra installs


_REDIS: Final = BrokerKind("tidings.brokers.redis", "RedisBroker", "redis", "redis")
# URL scheme -> broker. Add a broker here, not with another ``if``.
BROKER_SCHEMES: Final[dict[str, BrokerKind]] = {
    "redis": _REDIS,
    "rediss": _REDIS,
    "unix": _REDIS,
    "redis-cluster": _REDIS,
}
_KNOWN_FORMS: Final = "memory, redis://host:port/db or redis-cluster://host:port"


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
        if exc.name is None or exc.name.split(".")[0] != kind.dependency:
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


def check_broker(broker: str | None, data: str | Path | None) -> None:
    """Check that ``create_broker`` can make this broker, without making it.

    Raises:
        UnknownBroker, MissingExtra, UnusableDataDirectory, ConfigError: see
            ``create_broker``.
    """
    if broker in (None, "", "memory"):
        if data is not None:
            check_data_directory(data)
        return
    assert broker is not None
    if data is not None:
        raise ConfigError("data (the sqlite directory) applies only to the embedded broker")
    _broker_class(broker)


def create_broker(
    broker: str | None,
    data: str | Path | None,
    namespaces: Namespaces,
    dedupe: DedupeOptions,
    *,
    publish_timeout_s: float | None = None,
    sqlite_durability: str = "full",
    node_id: str | None = None,
) -> Broker:
    """Return the broker named by ``broker`` (a URL) or, without one, by ``data``.

    ``redis://host:port/db`` (also ``rediss://``, ``unix://``) is the Redis broker,
    ``redis-cluster://host:port`` the Redis Cluster one; ``memory`` or nothing is the
    memory broker, or the sqlite broker keeping its files in ``data`` if given, with
    ``sqlite_durability`` (``full`` or ``fast``, see ``brokers.sqlite``).
    ``publish_timeout_s`` bounds a remote broker's publish (see ``RedisBroker``); the
    local ones wait on no network. ``node_id`` names this node to a remote broker's
    other nodes (random if ``None``).

    Raises:
        UnknownBroker: a broker URL of no known scheme.
        MissingExtra: the broker's optional dependency is not installed.
        UnusableDataDirectory: ``data`` cannot be created or written in.
        ConfigError: ``data`` given with a remote broker.
    """
    check_broker(broker, data)
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
    if publish_timeout_s is None:
        return broker_class(broker, namespaces, dedupe=dedupe, node_id=node_id)
    return broker_class(
        broker, namespaces, dedupe=dedupe, publish_timeout_s=publish_timeout_s, node_id=node_id
    )
