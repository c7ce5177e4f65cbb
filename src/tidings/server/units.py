"""Parsing of durations and sizes in configuration ("1h", "64KiB"). Pure."""

from __future__ import annotations

import re
from typing import Final

from tidings.errors import ConfigError

_DURATION: Final = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*")
_DURATION_UNITS_S: Final = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}
_SIZE: Final = re.compile(r"\s*(\d+)\s*(B|KiB|MiB|GiB|KB|MB|GB)?\s*", re.IGNORECASE)
_SIZE_UNITS: Final = {
    "b": 1,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    None: 1,
}


def parse_duration_s(name: str, value: object) -> float:
    """Parse a duration: a number of seconds or text like ``"500ms"``, ``"30s"``, ``"1h"``.

    Raises:
        ConfigError: the value is neither.
    """
    if isinstance(value, bool):
        raise ConfigError(f'{name} must be a duration such as 30, "30s", "5m" or "1h"')
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.fullmatch(value)):
        seconds = float(match.group(1)) * _DURATION_UNITS_S[match.group(2)]
    else:
        raise ConfigError(
            f'{name} is {value!r}; expected a duration such as 30, "30s", "5m" or "1h"'
        )
    if seconds < 0:
        raise ConfigError(f"{name} must not be negative, got {value!r}")
    return seconds


def parse_size_bytes(name: str, value: object) -> int:
    """Parse a size: a number of bytes or text like ``"64KiB"``, ``"1MiB"``.

    Raises:
        ConfigError: the value is neither.
    """
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    if isinstance(value, str) and (match := _SIZE.fullmatch(value)):
        unit = match.group(2)
        return int(match.group(1)) * _SIZE_UNITS[unit.lower() if unit else None]
    raise ConfigError(f'{name} is {value!r}; expected a size such as 65536, "64KiB" or "1MiB"')
