"""Where and how to reach PostgreSQL: the broker URL and the ``[brokers.postgres]``
table, read once into a ``PostgresTarget``. Pure: no I/O.

Our settings (``schema``, ``notify``, ``poll_interval``, ``pool_size``) may be in the
table or in the URL's query; the URL wins. The URL's other query parameters are
libpq's (``sslmode``, ``connect_timeout``...) and go to the driver untouched.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from tidings.errors import ConfigError

DEFAULT_SCHEMA: Final = "tidings"
DEFAULT_POLL_INTERVAL_S: Final = 0.5
DEFAULT_POOL_SIZE: Final = 10
# The settings of ``[brokers.postgres]``; the URL's query may set them too.
FILE_SETTINGS: Final = ("schema", "notify", "poll_interval", "pool_size")
# A plain identifier: it names the schema and starts the NOTIFY channels (63 bytes at
# most in PostgreSQL, so the schema leaves room for the suffixes).
_SCHEMA_PATTERN: Final = re.compile(r"[a-z_][a-z0-9_]{0,39}")
_TRUE: Final = ("yes", "true", "on", "1")
_FALSE: Final = ("no", "false", "off", "0")


@dataclass(frozen=True, slots=True)
class PostgresTarget:
    """Where and how to reach PostgreSQL, from a broker URL and its table."""

    conninfo: str  # what libpq reads: the URL without our own settings
    schema: str
    notify: bool  # wake nodes with LISTEN/NOTIFY; false: pure pull, polling
    poll_interval_s: float
    pool_size: int

    @classmethod
    def parse(cls, url: str, options: Mapping[str, object] | None = None) -> PostgresTarget:
        """Read a ``postgres://`` or ``postgresql://`` URL and the broker's table.

        Raises:
            ConfigError: a setting of the wrong type or out of range, or an unknown
                key in ``options``.
        """
        settings: dict[str, object] = {}
        for name, value in (options or {}).items():
            if name not in FILE_SETTINGS:
                raise ConfigError(
                    f"brokers.postgres: unknown setting {name!r}; known: {sorted(FILE_SETTINGS)}"
                )
            settings[name] = value
        parts = urlsplit(url)
        kept = []
        for name, value in parse_qsl(parts.query, keep_blank_values=True):
            if name in FILE_SETTINGS:
                settings[name] = value
            else:
                kept.append((name, value))
        conninfo = urlunsplit(
            ("postgresql", parts.netloc, parts.path, urlencode(kept), parts.fragment)
        )
        return cls(
            conninfo,
            _schema(settings.get("schema", DEFAULT_SCHEMA)),
            _flag("notify", settings.get("notify", True)),
            _number("poll_interval", settings.get("poll_interval", DEFAULT_POLL_INTERVAL_S)),
            int(_number("pool_size", settings.get("pool_size", DEFAULT_POOL_SIZE), whole=True)),
        )


def _schema(value: object) -> str:
    if not isinstance(value, str) or _SCHEMA_PATTERN.fullmatch(value) is None:
        raise ConfigError(
            "brokers.postgres.schema must be a lower-case identifier of at most 40 "
            f"characters (a-z, 0-9, _), got {value!r}"
        )
    return value


def _flag(name: str, value: object) -> bool:
    if isinstance(value, str) and value.lower() in (*_TRUE, *_FALSE):
        return value.lower() in _TRUE  # from the URL or the environment, as text
    if not isinstance(value, bool):
        raise ConfigError(f"brokers.postgres.{name} must be true or false, got {value!r}")
    return value


def _number(name: str, value: object, *, whole: bool = False) -> float:
    if isinstance(value, str):
        with contextlib.suppress(ValueError):  # left as text, refused below
            value = float(value)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ConfigError(f"brokers.postgres.{name} must be a positive number, got {value!r}")
    if whole and value != int(value):
        raise ConfigError(f"brokers.postgres.{name} must be a whole number, got {value!r}")
    return float(value)


def without_credentials(url: str) -> str:
    """``url`` without user and password, for logs."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path, "", ""))
