"""``tidings serve`` and ``tidings check-config``: run a node, or check its configuration.

I/O: reads the configuration file and the environment, checks the broker and the data
directory, and runs the node (``server.runner``). A node that cannot start ends with
one line on stderr and an exit status that says why (``runner.ExitStatus``), never a
traceback.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sys
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit, urlunsplit

import click

from tidings.brokers.factory import check_broker
from tidings.cli.options import configure_node_logging, fail, fail_with, verbose_option
from tidings.errors import ConfigError, TidingsError
from tidings.server.config import load_settings, setting_name
from tidings.server.runner import ExitStatus, run_node, run_workers
from tidings.server.settings import Settings
from tidings.sources.registry import create_sources
from tidings.sources.runner import check_sources

SECRET_SETTINGS: Final = frozenset({"api_key", "jwt_secret", "cluster_secret"})
# Settings of a broker's table that are credentials (the relay's upstream token and key).
SECRET_BROKER_SETTINGS: Final = frozenset({"api_key", "token"})
MASK: Final = "********"

SERVE_EXAMPLES: Final = """
\b
Examples:
  tidings serve                          memory broker on 127.0.0.1:8000
  tidings serve --demo                   and the chat demo at /demo
  tidings serve --data ./data            sqlite broker: history survives restarts
  tidings serve --broker redis://127.0.0.1:6379/0 --workers 4
  tidings serve --broker relay+ws://origin:8000   a relay of another node
  TIDINGS_API_KEY=s3cret tidings serve --host 0.0.0.0 --config tidings.toml

\b
Every setting can also come from a TOML file (--config) or a TIDINGS_* variable;
arguments win over the environment, which wins over the file (docs/configuration.md).
\b
Exit statuses: 0 stopped, 1 invalid setting (or a source's table or column missing),
2 bad usage, 3 address in use or not bindable, 4 broker or source extra not installed,
5 unknown broker, 6 unusable --data directory.
"""


def config_option(function: click.decorators.FC) -> click.decorators.FC:
    """``--config``: a TOML configuration file."""
    return click.option(
        "--config",
        "config_file",
        type=click.Path(path_type=Path),
        default=None,
        help="A TOML configuration file (docs/configuration.md).",
    )(function)


@click.command(short_help="Run a node.", epilog=SERVE_EXAMPLES)
@click.option(
    "--host", default=None, help="Address to bind (default 127.0.0.1). Env: TIDINGS_HOST."
)
@click.option(
    "--port", type=int, default=None, help="Port to bind (default 8000). Env: TIDINGS_PORT."
)
@click.option(
    "--broker",
    default=None,
    help="Broker URL: memory (default), redis://host:port/db, redis-cluster://host:port, "
    "postgres://user@host:port/db, nats://host:port, or relay+ws://host:port "
    "(relay+http://) to relay another node. Env: TIDINGS_BROKER.",
)
@click.option(
    "--data",
    default=None,
    help="Directory for the sqlite broker (history survives restarts). Env: TIDINGS_DATA.",
)
@config_option
@click.option(
    "--workers",
    type=int,
    default=1,
    show_default=True,
    help="Processes sharing the port (SO_REUSEPORT); more than 1 needs a shared broker.",
)
@click.option(
    "--server-backend",
    type=click.Choice(["native", "uvicorn"]),
    default=None,
    help="The HTTP server: native (default; writes pre-framed bytes straight to each "
    "socket) or uvicorn (the plain ASGI path). Env: TIDINGS_SERVER_BACKEND.",
)
@click.option(
    "--log-level",
    default="info",
    type=click.Choice(["debug", "info", "warning", "error"]),
    help="How much to log (default info; -v is debug).",
)
@click.option(
    "--access-log",
    is_flag=True,
    default=None,
    help="Log one line per request: address, method, path (token= redacted), status, "
    "duration. Env: TIDINGS_ACCESS_LOG.",
)
@click.option(
    "--demo",
    is_flag=True,
    default=False,
    help="Also serve the chat demo at /demo (demo only: it lets clients publish in room:* "
    "and, without a jwt_secret, signs a token for any name). Env: TIDINGS_DEMO.",
)
@verbose_option
def serve(
    *,
    host: str | None,
    port: int | None,
    data: str | None,
    broker: str | None,
    config_file: Path | None,
    log_level: str,
    workers: int,
    demo: bool,
    server_backend: str | None,
    access_log: bool | None,
    verbose: bool,
) -> None:
    """Run a tidings node (memory broker by default, sqlite with --data, or --broker URL)."""
    log_level = "debug" if verbose else log_level
    configure_node_logging(log_level)
    arguments = {
        "host": host,
        "port": port,
        "data": data,
        "broker": broker,
        "server_backend": server_backend,
        "access_log": access_log,
        "demo": demo or None,
    }
    try:
        settings = load_settings(config_file, os.environ, arguments)
        if workers < 1:
            raise ConfigError(f"--workers must be at least 1, got {workers}")
        if settings.demo and workers > 1:
            raise ConfigError("--demo runs in one process: its token secret is per process")
        check_broker(settings.broker, settings.data, settings.brokers)
        # Before anything starts, so that a missing table is the command's only line.
        asyncio.run(check_sources(create_sources(settings.sources)))
        if workers > 1:
            sys.exit(run_workers(settings, log_level, workers))
        run_node(settings, log_level)
    except TidingsError as exc:
        fail_with(exc)


@click.command(
    "check-config", short_help="Check the configuration; print the settings a node would use."
)
@config_option
@verbose_option
def check_config(*, config_file: Path | None, verbose: bool) -> None:
    """Check a configuration file and the TIDINGS_* environment, and print the settings
    a node would run with (secrets masked). Exits non-zero, with the reason, if invalid.

    \b
    Examples:
      tidings check-config --config tidings.toml
      TIDINGS_PORT=9000 tidings check-config
    """
    configure_node_logging("debug" if verbose else "warning")
    try:
        settings = load_settings(config_file, os.environ)
        check_broker(settings.broker, None, settings.brokers)
        create_sources(settings.sources)  # each kind checks its own settings
    except TidingsError as exc:
        fail_with(exc)
    if (
        settings.data is not None
        and Path(settings.data).exists()
        and not Path(settings.data).is_dir()
    ):
        fail(f"data {settings.data!r} is not a directory", ExitStatus.DATA_DIRECTORY)
    for line in describe_settings(settings):
        click.echo(line)


def describe_settings(settings: Settings) -> list[str]:
    """Return ``name = value`` lines of every setting, secrets masked."""
    lines = []
    for field in dataclasses.fields(settings):
        if field.name in ("namespaces", "brokers", "sources"):
            continue
        value = getattr(settings, field.name)
        if field.name in SECRET_SETTINGS and value is not None:
            value = MASK
        elif field.name == "broker" and isinstance(value, str):
            value = _without_password(value)
        elif field.name.endswith("_s"):
            value = f"{value:g}s"
        lines.append(f"{setting_name(field.name)} = {_shown(value)}")
    for broker, table in sorted(settings.brokers.items()):
        lines += [
            f"brokers.{broker}.{key} = {MASK if key in SECRET_BROKER_SETTINGS else _shown(value)}"
            for key, value in table.items()
        ]
    for source in settings.sources:
        lines.append(f"sources.{source.name}.kind = {source.kind}")
        for key, value in source.options.items():
            shown = _without_password(value) if isinstance(value, str) and key == "dsn" else value
            lines.append(f"sources.{source.name}.{key} = {_shown(shown)}")
    for name, options in sorted(settings.namespaces.items(), key=lambda item: item[0] or ""):
        lines.append(
            f"namespaces.{name or 'default'} = policy {options.policy.value}, "
            f"client_publish {_shown(options.client_publish)}, "
            f"presence {_shown(options.presence)}, history_size {options.history.size}, "
            f"history_ttl {options.history.ttl_ms / 1000:g}s, "
            f"max_data_size {options.max_data_bytes}"
        )
    return lines


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", f":{MASK}@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def _shown(value: object) -> str:
    if value is None:
        return "(unset)"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ", ".join(str(item) for item in value) or "(none)"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)
