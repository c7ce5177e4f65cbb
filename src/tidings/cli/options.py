"""What every ``tidings`` command shares: ``-v/--verbose``, the node's address and API
key options, logging set-up, and how an error ends a command (one line, an exit status).

I/O: configures logging (the CLI is the only place that does) and writes to stderr.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from typing import Final, NoReturn, TypeVar

import click

from tidings.errors import RequestError, TidingsError
from tidings.server.runner import ExitStatus, exit_status_of

F = TypeVar("F", bound=Callable[..., object])

DEFAULT_SERVER: Final = "http://127.0.0.1:8000"
LOG_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# What a client command says on stderr: its own lifecycle, without timestamps.
CLIENT_LOG_FORMAT: Final = "tidings: %(message)s"


def verbose_option(function: F) -> F:
    """``-v/--verbose``: log at DEBUG (every command has it)."""
    return click.option(
        "-v",
        "--verbose",
        is_flag=True,
        default=False,
        help="Log at DEBUG: every connection, request and publication handled.",
    )(function)


def server_option(function: F) -> F:
    """``--url/--server``: the node's HTTP address (env: TIDINGS_URL)."""
    return click.option(
        "--url",
        "--server",
        "server",
        envvar="TIDINGS_URL",
        show_envvar=True,
        default=DEFAULT_SERVER,
        show_default=True,
        help="The node's HTTP address.",
    )(function)


def api_key_option(function: F) -> F:
    """``--api-key``: the server API key (env: TIDINGS_API_KEY)."""
    return click.option(
        "--api-key",
        envvar="TIDINGS_API_KEY",
        show_envvar=True,
        default=None,
        help="The node's server API key (api_key).",
    )(function)


def configure_node_logging(level: str) -> None:
    """Log everything at ``level`` to stderr with timestamps (``tidings serve``)."""
    logging.basicConfig(level=level.upper(), format=LOG_FORMAT)
    if level.lower() != "debug":
        # httpx logs every request at INFO: a relay's calls upstream, one per publish.
        logging.getLogger("httpx").setLevel(logging.WARNING)


class _SaidByTheCommand(logging.Filter):
    """Drops the client's lines that a command prints in its own words (a gap notice,
    the error that ended a subscription), so that stderr does not say them twice."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (isinstance(record.msg, str) and record.msg.startswith(_SAID_BY_THE_COMMAND))


# The templates of tidings.client.subscription's lines that a command says itself.
_SAID_BY_THE_COMMAND: Final = ("gap in ", "subscription to ")


def configure_client_logging(verbose: bool) -> None:
    """A client command tells what the client does (``tidings.client`` at INFO:
    connecting, reconnecting and why) and nothing else, unless ``verbose``: then
    everything at DEBUG."""
    if verbose:
        logging.basicConfig(level=logging.DEBUG, format=LOG_FORMAT)
        return
    logging.basicConfig(level=logging.WARNING, format=CLIENT_LOG_FORMAT)
    for handler in logging.getLogger().handlers:
        handler.addFilter(_SaidByTheCommand())
    logging.getLogger("tidings.client").setLevel(logging.INFO)


def fail(message: str, status: int = ExitStatus.CONFIG) -> NoReturn:
    """End the command with ``Error: message`` on stderr and ``status``."""
    click.echo(f"Error: {message}", err=True)
    sys.exit(int(status))


def fail_with(error: TidingsError) -> NoReturn:
    """End the command with ``error`` as one line, and the exit status of its kind."""
    if isinstance(error, RequestError):
        fail(f"{error.code}: {error.message}")
    fail(str(error), exit_status_of(error))
