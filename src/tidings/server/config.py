"""Node configuration: defaults, a TOML file, ``TIDINGS_*`` environment variables, arguments.

Parsing only (reads the file it is given). Each setting has one name used everywhere:
``api_key`` in the file is ``TIDINGS_API_KEY`` in the environment and ``--api-key`` on
the command line. Later sources win: defaults < file < environment < arguments.
Namespaces are tables of the file (``[namespaces.room]``) or, in the environment,
``TIDINGS_NAMESPACES__ROOM__CLIENT_PUBLISH=true``. Unknown names are errors, so a typo
never silently leaves a default in force.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final, Literal

from tidings.core.channel import DEFAULT_NAMESPACE, NamespaceName
from tidings.core.history import HistoryOptions
from tidings.core.namespace import NamespaceOptions, Namespaces, Policy, default_namespaces
from tidings.errors import ConfigError
from tidings.server.units import parse_duration_s, parse_size_bytes

ENV_PREFIX: Final = "TIDINGS_"
DEFAULT_NAMESPACE_KEY: Final = "default"
# Variables of the client commands (tidings subscribe, history...), not node settings:
# a shell that sets them for those may still run tidings serve.
CLIENT_VARIABLES: Final = frozenset({"TIDINGS_URL", "TIDINGS_TOKEN"})

TransportName = Literal["ws", "sse", "poll"]
TRANSPORTS: Final[tuple[TransportName, ...]] = ("ws", "sse", "poll")
ServerBackend = Literal["native", "uvicorn"]
SERVER_BACKENDS: Final[tuple[ServerBackend, ...]] = ("native", "uvicorn")


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything a node is configured with. See docs/configuration.md for each setting."""

    host: str = "127.0.0.1"
    port: int = 8000
    data: str | None = None
    broker: str | None = None
    api_key: str | None = None
    jwt_secret: str | None = None
    allowed_origins: tuple[str, ...] = ()
    ping_interval_s: float = 25.0
    max_connections: int = 10_000
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
    transports: tuple[TransportName, ...] = TRANSPORTS
    demo: bool = False
    access_log: bool = False
    server_backend: ServerBackend = "native"
    namespaces: Mapping[NamespaceName, NamespaceOptions] = field(default_factory=default_namespaces)

    def namespace_table(self) -> Namespaces:
        """Return the namespace lookup of these settings."""
        return Namespaces(self.namespaces)

    @property
    def max_data_bytes(self) -> int:
        """The largest ``data`` any namespace accepts (bounds a WebSocket frame)."""
        return max(options.max_data_bytes for options in self.namespaces.values())


def _as_str(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{name} must be a string, got {value!r}")
    return value


def _as_optional_str(name: str, value: object) -> str | None:
    text = _as_str(name, value)
    return text or None


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


def _as_server_backend(name: str, value: object) -> ServerBackend:
    for backend in SERVER_BACKENDS:
        if value == backend:
            return backend
    raise ConfigError(f"{name} must be one of {list(SERVER_BACKENDS)}, got {value!r}")


_PARSERS: Final[dict[str, Callable[[str, object], Any]]] = {
    "host": _as_str,
    "port": _as_int,
    "data": _as_optional_str,
    "broker": _as_optional_str,
    "api_key": _as_optional_str,
    "jwt_secret": _as_optional_str,
    "allowed_origins": _as_origins,
    "ping_interval": parse_duration_s,
    "max_connections": _as_int,
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
    "transports": _as_transports,
    "demo": _as_bool,
    "access_log": _as_bool,
    "server_backend": _as_server_backend,
}
# Settings fields whose configuration name drops the unit suffix.
_FIELD_OF: Final = {
    "ping_interval": "ping_interval_s",
    "outbound_buffer": "outbound_buffer_bytes",
    "dedupe_window": "dedupe_window_s",
    "shutdown_timeout": "shutdown_timeout_s",
    "drain_window": "drain_window_s",
    "publish_timeout": "publish_timeout_s",
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


def _apply(settings: Settings, values: Mapping[str, object], source: str) -> Settings:
    changes: dict[str, Any] = {}
    namespaces = dict(settings.namespaces)
    for name, value in values.items():
        if name == "namespaces":
            if not isinstance(value, Mapping):
                raise ConfigError(f"{source}: namespaces must be a table of namespace tables")
            for ns_name, table in value.items():
                if not isinstance(table, Mapping):
                    raise ConfigError(f"{source}: namespaces.{ns_name} must be a table")
                key = (
                    DEFAULT_NAMESPACE
                    if ns_name == DEFAULT_NAMESPACE_KEY
                    else NamespaceName(ns_name)
                )
                base = namespaces.get(key, namespaces[DEFAULT_NAMESPACE])
                namespaces[key] = _namespace_options(ns_name, table, base)
            continue
        parser = _PARSERS.get(name)
        if parser is None:
            raise ConfigError(
                f"{source}: unknown setting {name!r}; known: {sorted([*_PARSERS, 'namespaces'])}"
            )
        changes[_FIELD_OF.get(name, name)] = parser(name, value)
    return replace(settings, namespaces=namespaces, **changes)


def _env_values(environ: Mapping[str, str]) -> dict[str, object]:
    values: dict[str, object] = {}
    for variable, value in environ.items():
        if not variable.startswith(ENV_PREFIX) or variable in CLIENT_VARIABLES:
            continue
        path = variable[len(ENV_PREFIX) :].lower().split("__")
        if path[0] == "namespaces" and len(path) == 3:
            tables = values.setdefault("namespaces", {})
            assert isinstance(tables, dict)
            tables.setdefault(path[1], {})[path[2]] = value
        elif len(path) == 1:
            values[path[0]] = value
        else:
            raise ConfigError(
                f"{variable}: nested names take the form TIDINGS_NAMESPACES__<NAME>__<SETTING>"
            )
    return values


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
        ConfigError: a file that cannot be read or parsed, an unknown setting, or a
            value of the wrong form; the message names the setting and what is accepted.
    """
    settings = Settings()
    if config_file is not None:
        try:
            with config_file.open("rb") as file:
                table = tomllib.load(file)
        except OSError as exc:
            raise ConfigError(f"cannot read config file {config_file}: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {config_file} is not valid TOML: {exc}") from exc
        settings = _apply(settings, table, str(config_file))
    if environ is not None:
        settings = _apply(settings, _env_values(environ), "environment")
    if arguments:
        given = {name: value for name, value in arguments.items() if value is not None}
        settings = _apply(settings, given, "arguments")
    if settings.ping_interval_s <= 0:
        raise ConfigError(f"ping_interval must be more than 0, got {settings.ping_interval_s:g}")
    if not 0 < settings.drain_rate < math.inf:
        raise ConfigError(
            f"drain_rate must be reconnects per second above 0, got {settings.drain_rate:g}"
        )
    if settings.publish_timeout_s <= 0:
        raise ConfigError(
            f"publish_timeout must be more than 0, got {settings.publish_timeout_s:g}"
        )
    return settings
