"""Where NATS is and how the NATS broker lays its things out there: the broker URL and
the ``[brokers.nats]`` table, read once and checked without I/O (``NatsTarget``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final
from urllib.parse import parse_qsl, urlsplit

from tidings.brokers.nats_subjects import DEFAULT_PREFIX, is_valid_prefix
from tidings.errors import ConfigError

# The settings of ``[brokers.nats]``; the URL's query may set them too.
FILE_SETTINGS: Final = ("prefix", "replicas", "storage")
_STORAGES: Final = ("file", "memory")


@dataclass(frozen=True, slots=True)
class NatsTarget:
    """Where NATS is and how the broker lays its things out there, from a broker URL."""

    servers: tuple[str, ...]
    prefix: str
    replicas: int
    storage: str

    @classmethod
    def parse(cls, url: str, options: Mapping[str, object] | None = None) -> NatsTarget:
        """Read ``nats://host:port[,host:port...]`` and ``[brokers.nats]`` (``options``).

        ``prefix`` (default ``tidings``) starts every subject and names the stream and
        bucket; ``replicas`` (default 1) is the stream's replication in a cluster;
        ``storage`` is ``file`` (default) or ``memory``. The URL's query wins.

        Raises:
            ConfigError: an unknown setting or a bad value.
        """
        settings: dict[str, object] = {}
        for name, value in (options or {}).items():
            if name not in FILE_SETTINGS:
                raise ConfigError(
                    f"brokers.nats: unknown setting {name!r}; known: {list(FILE_SETTINGS)}"
                )
            settings[name] = value
        parts = urlsplit(url)
        for name, value in parse_qsl(parts.query, keep_blank_values=True):
            if name not in FILE_SETTINGS:
                raise ConfigError(
                    f"broker URL: unknown setting {name!r}; known: {list(FILE_SETTINGS)}"
                )
            settings[name] = value
        prefix = str(settings.get("prefix", DEFAULT_PREFIX))
        if not is_valid_prefix(prefix):
            raise ConfigError(
                f"brokers.nats.prefix must be 1 to 64 of A-Z a-z 0-9 _ -, got {prefix!r}"
            )
        replicas_value = settings.get("replicas", 1)
        try:
            replicas = int(str(replicas_value))
        except ValueError:
            replicas = 0
        if not 1 <= replicas <= 5:
            raise ConfigError(f"brokers.nats.replicas must be 1 to 5, got {replicas_value!r}")
        storage = str(settings.get("storage", "file"))
        if storage not in _STORAGES:
            raise ConfigError(f"brokers.nats.storage must be file or memory, got {storage!r}")
        if parts.scheme not in ("nats", "tls") or not parts.netloc:
            raise ConfigError(f"broker {url!r}: use nats://host:port[,host:port...]")
        userinfo, _, hosts = parts.netloc.rpartition("@")
        credentials = f"{userinfo}@" if userinfo else ""
        servers = tuple(f"{parts.scheme}://{credentials}{host}" for host in hosts.split(","))
        return cls(servers, prefix, replicas, storage)
