"""The kinds of source, and making a node's sources from its ``[[sources]]`` tables.

``parse_sources`` reads the array of the configuration file (server/config.py merges it
with the node's other settings): a name and a known kind for each, the kind's own keys
left to its class.

No I/O but imports: each kind's module is imported only when a source of that kind is
configured, so its optional dependency (psycopg, a Kafka client) is needed only by the
nodes that use it; a missing one is reported with the ``pip install`` line that adds
it. Adding a kind takes one module, whose class has ``from_settings(name, table)`` and
implements ``base.Source``, and one line in ``SOURCE_KINDS``.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, cast

from tidings.errors import ConfigError
from tidings.sources.base import Source, SourceKindClass


@dataclass(frozen=True, slots=True)
class SourceKind:
    """Where a kind's class lives, and the extra that installs what it needs (``None``:
    nothing beyond tidings itself)."""

    module: str
    class_name: str
    extra: str | None


# kind -> its class. Add a kind here, not with another ``if``.
SOURCE_KINDS: Final[dict[str, SourceKind]] = {
    "table": SourceKind("tidings.sources.table", "TableSource", None),
    "kafka": SourceKind("tidings.sources.kafka", "KafkaSource", "kafka"),
}


@dataclass(frozen=True, slots=True)
class SourceSettings:
    """One ``[[sources]]`` table: its name, kind, and the kind's own settings."""

    name: str
    kind: str
    options: Mapping[str, object]


# A source's name appears in idempotency keys, metric labels, lock files and (PostgreSQL)
# a LISTEN channel and trigger name, which must stay under 63 bytes.
SOURCE_NAME_PATTERN: Final = re.compile(r"[a-z0-9_]{1,40}")


class SourceMissingExtra(ConfigError):
    """A source kind's optional dependency is not installed."""

    def __init__(self, source: str, kind: str, extra: str, dependency: str) -> None:
        super().__init__(
            f"source {source!r} of kind {kind!r} needs the {dependency!r} package, which is "
            f"not installed: pip install 'tidings[{extra}]'"
        )
        self.extra = extra
        self.dependency = dependency


def source_kind(source: str, kind: object) -> SourceKind:
    """Return the kind named ``kind``.

    Raises:
        ConfigError: no such kind.
    """
    found = SOURCE_KINDS.get(kind) if isinstance(kind, str) else None
    if found is None:
        raise ConfigError(
            f"source {source!r} has kind {kind!r}; known kinds: {sorted(SOURCE_KINDS)}"
        )
    return found


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


def create_source(settings: SourceSettings) -> Source:
    """Make the source ``settings`` describe (no I/O).

    Raises:
        ConfigError: an unknown kind, a bad setting, or (``SourceMissingExtra``) the
            kind's optional dependency is not installed.
    """
    kind = source_kind(settings.name, settings.kind)
    try:
        module = importlib.import_module(kind.module)
    except ImportError as exc:
        missing = exc.name or "?"
        if missing == kind.module:
            raise ConfigError(
                f"source {settings.name!r}: kind {settings.kind!r} is not in this tidings build"
            ) from None
        if kind.extra is None or missing.split(".")[0] == "tidings":
            raise
        raise SourceMissingExtra(settings.name, settings.kind, kind.extra, missing) from None
    kind_class = cast(SourceKindClass, getattr(module, kind.class_name))
    return kind_class.from_settings(settings.name, settings.options)


def create_sources(all_settings: tuple[SourceSettings, ...]) -> list[Source]:
    """Make every source of a node (see ``create_source``)."""
    return [create_source(settings) for settings in all_settings]
