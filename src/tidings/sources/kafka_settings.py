"""A Kafka source's settings: its ``[[sources]]`` table, checked (docs/configuration.md,
"Kafka source"). Pure: no Kafka client here, so a configuration can be checked without
the ``kafka`` extra.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final, Literal

from tidings.errors import ConfigError
from tidings.server.units import parse_duration_s
from tidings.sources.kafka_mapping import ChannelTemplate, DataSelection, RecordMapping

OffsetReset = Literal["earliest", "latest"]

DEFAULT_SESSION_TIMEOUT_S: Final = 10.0
_SETTINGS: Final = (
    "bootstrap_servers",
    "topics",
    "group_id",
    "channel",
    "data",
    "auto_offset_reset",
    "session_timeout",
)
_SERVER: Final = re.compile(r"(?P<host>\[[0-9A-Fa-f:.]+\]|[^\s:\[\]]+)(?::(?P<port>\d{1,5}))?")
# The framework's keys, read by it before a source sees the table.
_FRAMEWORK_KEYS: Final = ("kind", "name")


@dataclass(frozen=True, slots=True)
class KafkaSettings:
    """A Kafka source's ``[[sources]]`` table, checked."""

    bootstrap_servers: tuple[str, ...]
    topics: tuple[str, ...]
    group_id: str
    mapping: RecordMapping
    auto_offset_reset: OffsetReset = "earliest"
    session_timeout_s: float = DEFAULT_SESSION_TIMEOUT_S

    @classmethod
    def parse(cls, name: str, table: Mapping[str, object]) -> KafkaSettings:
        """Check a ``[[sources]]`` table of ``kind = "kafka"``.

        Raises:
            ConfigError: a missing or bad setting, or one no Kafka source has.
        """
        where = f"sources.{name}"
        for key in table:
            if key not in _SETTINGS and key not in _FRAMEWORK_KEYS:
                raise ConfigError(
                    f"{where}.{key}: a kafka source has no such setting; it has "
                    f"{', '.join(_SETTINGS)}"
                )
        reset = table.get("auto_offset_reset", "earliest")
        if reset not in ("earliest", "latest"):
            raise ConfigError(
                f"{where}.auto_offset_reset is {reset!r}; expected 'earliest' or 'latest'"
            )
        session_timeout_s = parse_duration_s(
            f"{where}.session_timeout", table.get("session_timeout", DEFAULT_SESSION_TIMEOUT_S)
        )
        if session_timeout_s < 0.3:  # heartbeats every 100 ms at the least
            raise ConfigError(f"{where}.session_timeout must be at least 300ms")
        mapping = RecordMapping(
            ChannelTemplate.parse(_text(table, where, "channel"), where=f"{where}.channel"),
            DataSelection.parse(_text(table, where, "data", "value"), where=f"{where}.data"),
        )
        servers = _names(table, where, "bootstrap_servers", split=",")
        for server in servers:
            _check_server(f"{where}.bootstrap_servers", server)
        return cls(
            bootstrap_servers=servers,
            topics=_names(table, where, "topics"),
            group_id=_text(table, where, "group_id", f"tidings-{name}"),
            mapping=mapping,
            auto_offset_reset="earliest" if reset == "earliest" else "latest",
            session_timeout_s=session_timeout_s,
        )


def _text(table: Mapping[str, object], where: str, key: str, default: str | None = None) -> str:
    value = table.get(key, default)
    if value is None:
        raise ConfigError(f"{where}.{key} is missing")
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}.{key} must be a non-empty string, got {value!r}")
    return value.strip()


def _check_server(where: str, server: str) -> None:
    """Refuse what is not ``host`` or ``host:port`` (IPv6 in brackets: ``[::1]:9092``)."""
    match = _SERVER.fullmatch(server)
    if match is None or (match["port"] is not None and not 0 < int(match["port"]) < 65536):
        raise ConfigError(f"{where}: {server!r} is not host or host:port")


def _names(
    table: Mapping[str, object], where: str, key: str, *, split: str | None = None
) -> tuple[str, ...]:
    """A list of names, or one string (``split`` on ``split`` if given)."""
    value = table.get(key)
    if value is None:
        raise ConfigError(f"{where}.{key} is missing")
    items: Iterable[object]
    if isinstance(value, str):
        items = value.split(split) if split else [value]
    elif isinstance(value, list | tuple):
        items = value
    else:
        raise ConfigError(f"{where}.{key} must be a list of strings, got {value!r}")
    names: list[str] = []
    for item in items:
        if not isinstance(item, str) or not item.strip():
            raise ConfigError(f"{where}.{key} must be a list of non-empty strings, got {value!r}")
        names.append(item.strip())
    if not names:
        raise ConfigError(f"{where}.{key} is empty")
    return tuple(dict.fromkeys(names))
