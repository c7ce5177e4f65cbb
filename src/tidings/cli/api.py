"""``tidings publish``, ``history``, ``channels`` and ``presence``: the server API
(docs/protocol.md §6) from the shell, through the Python client's ``ApiClient``.

I/O: HTTP calls to a node; answers are printed to stdout (JSON, or one line per item),
errors as one line on stderr with exit status 1.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from typing import TypeVar

import click
import httpx

from tidings.cli.options import (
    api_key_option,
    configure_client_logging,
    fail,
    fail_with,
    server_option,
    verbose_option,
)
from tidings.client.api import ApiClient
from tidings.core.publication import parse_position_text
from tidings.core.wire import encode_json, position_fields, publication_frame
from tidings.errors import TidingsError

T = TypeVar("T")


def _call(server: str, api_key: str | None, call: Callable[[ApiClient], Awaitable[T]]) -> T:
    """Run one API call; network failures and refusals end the command with one line."""

    async def run() -> T:
        async with ApiClient(server, api_key) as client:
            return await call(client)

    try:
        return asyncio.run(run())
    except httpx.HTTPError as exc:
        fail(f"cannot reach {server}: {exc}")
    except TidingsError as exc:
        fail_with(exc)
    except ValueError as exc:  # not an http(s) URL
        fail(str(exc))


@click.command(
    short_help="Publish JSON in a channel (server API).",
    epilog="""
\b
Examples:
  tidings publish room:45 '{"text": "hello"}'
  tidings publish room:45 '"plain text, quoted as JSON"' --key msg-0001
  TIDINGS_API_KEY=s3cret tidings publish --url http://node:8000 news '{"n": 1}'
""",
)
@click.argument("channel")
@click.argument("data")
@click.option(
    "--key", default=None, help="Idempotency key: a retry with it is not published twice."
)
@server_option
@api_key_option
@verbose_option
def publish(
    *, channel: str, data: str, key: str | None, server: str, api_key: str | None, verbose: bool
) -> None:
    """Publish DATA (JSON) in CHANNEL through the server API; print its position."""
    configure_client_logging(verbose)
    try:
        value = json.loads(data)
    except ValueError as exc:
        raise click.BadParameter(f"DATA must be JSON (quote strings: '\"hi\"'): {exc}") from exc
    position = _call(server, api_key, lambda client: client.publish(channel, value, key))
    click.echo(encode_json(position_fields(position)).decode())


@click.command(
    short_help="Print a channel's history (server API).",
    epilog="""
\b
Examples:
  tidings history room:45                  the latest publications, oldest first
  tidings history room:45 --limit 10
  tidings history room:45 --since Xq3v0b1Zc9E:41
""",
)
@click.argument("channel")
@click.option("--since", "since_text", default=None, help="Read after <epoch>:<offset>.")
@click.option(
    "--limit", type=click.IntRange(min=0), default=None, help="At most this many publications."
)
@server_option
@api_key_option
@verbose_option
def history(
    *,
    channel: str,
    since_text: str | None,
    limit: int | None,
    server: str,
    api_key: str | None,
    verbose: bool,
) -> None:
    """Print CHANNEL's history as JSON lines (as `tidings subscribe` prints them); the
    channel's position goes to stderr."""
    configure_client_logging(verbose)
    since = None
    if since_text is not None:
        try:
            since = parse_position_text(since_text)
        except TidingsError as exc:
            raise click.BadParameter(str(exc), param_hint="--since") from exc
    read = _call(server, api_key, lambda client: client.history(channel, since, limit))
    for publication in read.publications:
        sys.stdout.write(encode_json(publication_frame(publication)).decode() + "\n")
    note = f"{channel} is at {read.position.epoch}:{read.position.offset}"
    if read.recovered is False:
        note += f"; publications after {since_text} are no longer in its history"
    click.echo(note, err=True)


@click.command(
    short_help="List the channels with subscribers (server API).",
    epilog="""
\b
Examples:
  tidings channels                  every channel with subscribers on the node
  tidings channels --prefix room:
""",
)
@click.option("--prefix", default="", help="Only channels whose names start with this.")
@server_option
@api_key_option
@verbose_option
def channels(*, prefix: str, server: str, api_key: str | None, verbose: bool) -> None:
    """Print the node's channels that have subscribers: one `NAME<TAB>SUBSCRIBERS` line each."""
    configure_client_logging(verbose)
    counts = _call(server, api_key, lambda client: client.channels(prefix))
    for name, count in sorted(counts.items()):
        click.echo(f"{name}\t{count}")


@click.command(
    short_help="List who is subscribed to a channel (server API).",
    epilog="""
\b
Examples:
  tidings presence room:45
""",
)
@click.argument("channel")
@server_option
@api_key_option
@verbose_option
def presence(*, channel: str, server: str, api_key: str | None, verbose: bool) -> None:
    """Print who is subscribed to CHANNEL: one `CLIENT<TAB>USER` line each (presence
    must be on in its namespace)."""
    configure_client_logging(verbose)
    clients = _call(server, api_key, lambda client: client.presence(channel))
    for client_id, user in sorted(clients.items()):
        click.echo(f"{client_id}\t{user}")
