"""Node configuration: the ``Settings`` (settings.py), built from defaults, a TOML file,
``TIDINGS_*`` environment variables and arguments.

Parsing only (reads the file it is given). Each setting has one name used everywhere:
``api_key`` in the file is ``TIDINGS_API_KEY`` in the environment and ``--api-key`` on
the command line. Later sources win: defaults < file < environment < arguments.
Namespaces are tables of the file (``[namespaces.room]``) or, in the environment,
``TIDINGS_NAMESPACES__ROOM__CLIENT_PUBLISH=true``; they are built once every source is
merged (namespace_settings.py), so a namespace's options never depend on the order they
were read in. The publication sources of ``tidings.sources`` come from the file only, as
an array of tables (``[[sources]]``, read by ``sources.registry``); a kind's own keys are
its class's to check. Unknown names are errors, so a typo never silently leaves a
default in force; so are values that would make the node refuse every client (a zero
rate), and an empty secret. The parsers of values are settings_parsers.py's; the ring's
settings and their check are ring_settings.py's.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, Final

from tidings.core.origin import is_loopback_host
from tidings.errors import ConfigError
from tidings.server.auth import check_hs256_secret
from tidings.server.keys import load_public_key
from tidings.server.namespace_settings import NamespaceTables, build_namespaces
from tidings.server.ring_settings import RING_PARSERS, check_ring, with_ring_broker
from tidings.server.settings import (
    SERVER_BACKENDS,
    TRANSPORTS,
    ServerBackend,
    Settings,
    TransportName,
)
from tidings.server.settings_parsers import (
    check_node_id,
    check_public_url,
    parse_api_key,
    parse_bool,
    parse_choice,
    parse_count,
    parse_float,
    parse_int,
    parse_optional_str,
    parse_origins,
    parse_secret,
    parse_str,
)
from tidings.server.units import parse_duration_s, parse_size_bytes
from tidings.sources.registry import parse_sources

# Settings is settings.py's, offered here too: tests import it from here in many places
# (the package's own modules import it from settings.py).
__all__ = ["CLIENT_VARIABLES", "ENV_PREFIX", "Settings", "load_settings", "setting_name"]

ENV_PREFIX: Final = "TIDINGS_"
# Variables of the client commands (tidings subscribe, history...), not node settings:
# a shell that sets them for those may still run tidings serve.
CLIENT_VARIABLES: Final = frozenset({"TIDINGS_URL", "TIDINGS_TOKEN"})


def _parse_transports(name: str, value: object) -> tuple[TransportName, ...]:
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, list) or not all(isinstance(part, str) for part in value):
        raise ConfigError(f'{name} must be a list of transports such as ["sse", "poll"]')
    unknown = [part for part in value if part not in TRANSPORTS]
    if unknown or not value:
        raise ConfigError(f"{name} must name at least one of {list(TRANSPORTS)}, got {value!r}")
    return tuple(transport for transport in TRANSPORTS if transport in value)


def _parse_server_backend(name: str, value: object) -> ServerBackend:
    for backend in SERVER_BACKENDS:
        if value == backend:
            return backend
    raise ConfigError(f"{name} must be one of {list(SERVER_BACKENDS)}, got {value!r}")


_PARSERS: Final[dict[str, Callable[[str, object], Any]]] = {
    "host": parse_str,
    "port": parse_int,
    "data": parse_optional_str,
    "sqlite_durability": lambda name, value: parse_choice(name, value, ("full", "fast")),
    "broker": parse_optional_str,
    "api_key": parse_api_key,
    "jwt_secret": parse_secret,
    "jwt_public_key": parse_optional_str,
    "jwt_jwks_url": parse_optional_str,
    "jwt_jwks_refresh": parse_duration_s,
    "jwt_require_exp": parse_bool,
    "allowed_origins": parse_origins,
    "ping_interval": parse_duration_s,
    "max_connections": parse_int,
    "max_unauthenticated_connections": parse_int,
    "connect_timeout": parse_duration_s,
    "max_channels_per_connection": parse_int,
    "outbound_buffer": parse_size_bytes,
    "command_rate": parse_float,
    "command_burst": parse_float,
    "dedupe_window": parse_duration_s,
    "poll_watches": parse_count,
    "shutdown_timeout": parse_duration_s,
    "drain_window": parse_duration_s,
    "drain_rate": parse_float,
    "publish_timeout": parse_duration_s,
    "hot_channels": parse_bool,
    "hot_channel_deliveries_per_s": parse_float,
    "hot_channel_window": parse_duration_s,
    "hot_channel_sampling": parse_count,
    "agent_port": parse_int,
    "transports": _parse_transports,
    "demo": parse_bool,
    "access_log": parse_bool,
    "server_backend": _parse_server_backend,
    "allow_open_api": parse_bool,
    "node_id": lambda name, value: check_node_id(name, parse_str(name, value)),
    "public_url": lambda name, value: check_public_url(name, parse_str(name, value)),
    **RING_PARSERS,
}
# Settings fields whose configuration name drops the unit suffix.
_FIELD_OF: Final = {
    "ring_ttl": "ring_ttl_s",
    "handover_timeout": "handover_timeout_s",
    "ping_interval": "ping_interval_s",
    "outbound_buffer": "outbound_buffer_bytes",
    "dedupe_window": "dedupe_window_s",
    "shutdown_timeout": "shutdown_timeout_s",
    "jwt_jwks_refresh": "jwt_jwks_refresh_s",
    "drain_window": "drain_window_s",
    "publish_timeout": "publish_timeout_s",
    "connect_timeout": "connect_timeout_s",
    "hot_channel_window": "hot_channel_window_s",
}
_SETTING_OF_FIELD: Final = {field_name: name for name, field_name in _FIELD_OF.items()}


def setting_name(field_name: str) -> str:
    """Return the configuration name of a ``Settings`` field (``ping_interval_s`` is
    ``ping_interval``)."""
    return _SETTING_OF_FIELD.get(field_name, field_name)


def _apply(
    settings: Settings, values: Mapping[str, object], source: str, tables: NamespaceTables
) -> Settings:
    """Apply one source's settings; merge its namespace tables into ``tables`` (a later
    source's value of a namespace setting wins), to be built once all are read."""
    changes: dict[str, Any] = {}
    for name, value in values.items():
        if name == "namespaces":
            if not isinstance(value, Mapping):
                raise ConfigError(f"{source}: namespaces must be a table of namespace tables")
            for ns_name, table in value.items():
                if not isinstance(table, Mapping):
                    raise ConfigError(f"{source}: namespaces.{ns_name} must be a table")
                tables.setdefault(ns_name, {}).update(table)
            continue
        if name == "brokers":
            changes["brokers"] = _merge_broker_tables(
                changes.get("brokers", settings.brokers), value, source
            )
            continue
        if name == "sources":
            changes["sources"] = parse_sources(value, source)
            continue
        parser = _PARSERS.get(name)
        if parser is None:
            raise ConfigError(
                f"{source}: unknown setting {name!r}; "
                f"known: {sorted([*_PARSERS, 'namespaces', 'brokers', 'sources'])}"
            )
        changes[_FIELD_OF.get(name, name)] = parser(name, value)
    return replace(settings, **changes)


def _merge_broker_tables(
    tables: Mapping[str, Mapping[str, object]], value: object, source: str
) -> dict[str, dict[str, object]]:
    """Return ``tables`` with ``value``'s broker tables merged in, key by key (its keys
    win). What the keys mean is the chosen broker's to check, when it is made."""
    if not isinstance(value, Mapping):
        raise ConfigError(f"{source}: brokers must be a table of broker tables")
    merged = {name: dict(table) for name, table in tables.items()}
    for broker_name, table in value.items():
        if not isinstance(table, Mapping):
            raise ConfigError(f"{source}: brokers.{broker_name} must be a table")
        merged.setdefault(broker_name, {}).update(table)
    return merged


def _env_values(environ: Mapping[str, str]) -> dict[str, object]:
    values: dict[str, object] = {}
    for variable, value in environ.items():
        if not variable.startswith(ENV_PREFIX) or variable in CLIENT_VARIABLES:
            continue
        path = variable[len(ENV_PREFIX) :].lower().split("__")
        if path[0] in ("namespaces", "brokers") and len(path) == 3:
            tables = values.setdefault(path[0], {})
            assert isinstance(tables, dict)
            tables.setdefault(path[1], {})[path[2]] = value
        elif len(path) == 1:
            values[path[0]] = value
        else:
            raise ConfigError(
                f"{variable}: nested names take the form TIDINGS_NAMESPACES__<NAME>__<SETTING> "
                "or TIDINGS_BROKERS__<BROKER>__<SETTING>"
            )
    return values


def _check_open_api(settings: Settings) -> None:
    """Refuse to serve the server API without a key beyond this machine, unless asked."""
    is_open = settings.api_key is None and not settings.allow_open_api
    if is_open and not is_loopback_host(settings.host):
        raise ConfigError(
            f"host {settings.host!r} is not a loopback address and no api_key is set: "
            "anyone who reaches the node could publish and disconnect users; set api_key "
            "(TIDINGS_API_KEY), or allow_open_api = true to serve the API open on purpose"
        )


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
        ConfigError: a file that cannot be read or parsed, an unknown setting, a value
            of the wrong form or out of range (a zero ``command_rate``), an empty
            ``api_key`` or ``jwt_secret``, or an open server API (no ``api_key``) bound
            beyond loopback without ``allow_open_api``; the message names the setting
            and what is accepted.
    """
    settings = Settings()
    tables: NamespaceTables = {}
    if config_file is not None:
        try:
            with config_file.open("rb") as file:
                table = tomllib.load(file)
        except OSError as exc:
            raise ConfigError(f"cannot read config file {config_file}: {exc.strerror}") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {config_file} is not valid TOML: {exc}") from exc
        settings = _apply(settings, table, str(config_file), tables)
    if environ is not None:
        settings = _apply(settings, _env_values(environ), "environment", tables)
    if arguments:
        given = {name: value for name, value in arguments.items() if value is not None}
        settings = _apply(settings, given, "arguments", tables)
    settings = replace(settings, namespaces=build_namespaces(tables))
    _check_open_api(settings)
    _check_token_keys(settings)
    settings = with_ring_broker(settings)
    check_ring(settings)
    return settings


def _check_token_keys(settings: Settings) -> None:
    """Refuse at start what would refuse every token later: a short HS256 secret, an
    unreadable public key, two public key sources, a JWKS URL that is not HTTP."""
    if settings.jwt_secret is not None:
        check_hs256_secret(settings.jwt_secret)
    if settings.jwt_public_key is not None:
        if settings.jwt_jwks_url is not None:
            raise ConfigError("set jwt_public_key or jwt_jwks_url, not both")
        load_public_key(settings.jwt_public_key)
    url = settings.jwt_jwks_url
    if url is not None and not url.startswith(("https://", "http://")):
        raise ConfigError(f"jwt_jwks_url must be an http(s) URL, got {url!r}")
    if settings.jwt_jwks_refresh_s <= 0:
        raise ConfigError("jwt_jwks_refresh must be more than 0")
