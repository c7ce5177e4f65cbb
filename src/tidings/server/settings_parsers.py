"""The parsers of setting values: one per form a value takes, shared by every setting.

Pure. Each takes the setting's name (for its error message) and a value as the TOML file
(a typed value) or the environment (a string) gives it, and returns the value in its
``Settings`` form or raises ``ConfigError`` saying what was wrong and what is accepted.
Which setting uses which parser is ``config.py``'s table; durations and sizes are
``units.py``'s.
"""

from __future__ import annotations

import re
from typing import Final
from urllib.parse import urlsplit

from tidings.errors import ConfigError

NODE_ID_PATTERN: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")


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


def parse_str(name: str, value: object) -> str:
    """A string, as it is."""
    if not isinstance(value, str):
        raise ConfigError(f"{name} must be a string, got {value!r}")
    return value


def parse_optional_str(name: str, value: object) -> str | None:
    """A string; an empty one is unset (``None``)."""
    text = parse_str(name, value)
    return text or None


def parse_secret(name: str, value: object) -> str:
    """A key or secret: set to something, or not set at all (an empty one is a mistake)."""
    text = parse_str(name, value)
    if not text.strip():
        raise ConfigError(
            f"{name} is empty: set it to a secret value, or leave it out entirely "
            f"(an empty {name} is not read as unset)"
        )
    return text


def parse_api_key(name: str, value: object) -> str:
    """A secret (``parse_secret``) with no whitespace at either end."""
    key = parse_secret(name, value)
    if key != key.strip():
        # A presented bearer token is stripped (transports/http.py): it could never match.
        raise ConfigError(f"{name} starts or ends with whitespace, which no caller can send")
    return key


def parse_int(name: str, value: object) -> int:
    """A whole number >= 0, or its digits (the environment)."""
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{name} must be a whole number >= 0, got {value!r}")
    return value


def parse_count(name: str, value: object) -> int:
    """A whole number >= 1 (``parse_int`` that refuses 0)."""
    number = parse_int(name, value)
    if number < 1:
        raise ConfigError(f"{name} must be a whole number >= 1, got {value!r}")
    return number


def parse_float(name: str, value: object) -> float:
    """A number >= 0, or its text (the environment); never a bool or NaN."""
    try:
        number = float(value) if isinstance(value, str | int | float) else float("nan")
    except ValueError:
        number = float("nan")
    if isinstance(value, bool) or not number >= 0:
        raise ConfigError(f"{name} must be a number >= 0, got {value!r}")
    return number


def parse_bool(name: str, value: object) -> bool:
    """``true``/``false``, or (the environment) 1/0, yes/no, on/off."""
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


def parse_origins(name: str, value: object) -> tuple[str, ...]:
    """A list of origins, or (the environment) origins separated by commas."""
    if isinstance(value, str):
        return tuple(origin.strip() for origin in value.split(",") if origin.strip())
    if isinstance(value, list) and all(isinstance(origin, str) for origin in value):
        return tuple(value)
    raise ConfigError(f'{name} must be a list of origins such as ["https://app.example.com"]')


def parse_choice(name: str, value: object, choices: tuple[str, ...]) -> str:
    """One of ``choices``, as it is."""
    if value not in choices:
        raise ConfigError(f"{name} must be one of {list(choices)}, got {value!r}")
    return str(value)
