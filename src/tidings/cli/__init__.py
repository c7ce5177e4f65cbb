"""The ``tidings`` command: serve a node, and talk to one from the shell.

I/O: the terminal. Each command lives in its own module (``serve``, ``token``,
``subscribe``, ``api``, ``sources``, ``ring``); ``options`` holds what they share. The
CLI is the only place that configures logging.
"""

from __future__ import annotations

import click

from tidings.cli.api import channels, history, presence, publish
from tidings.cli.ring import ring
from tidings.cli.serve import check_config, serve
from tidings.cli.sources import sources
from tidings.cli.subscribe import subscribe
from tidings.cli.token import token

__all__ = ["main"]


@click.group(
    epilog="""
\b
Quick start:
  tidings serve                               a node on http://127.0.0.1:8000
  tidings subscribe room:45                   in a second terminal
  tidings publish room:45 '{"text": "hi"}'    in a third

Run `tidings COMMAND --help` for a command's options and examples.
"""
)
@click.version_option(package_name="tidings")
def main() -> None:
    """tidings: a real-time update server (WebSocket, SSE, polling)."""


for command in (
    serve,
    check_config,
    token,
    publish,
    subscribe,
    history,
    channels,
    presence,
    sources,
    ring,
):
    main.add_command(command)
