"""``tidings subscribe``: print channels' publications as JSON lines as they arrive.

I/O: runs a ``Subscription`` (the Python client) until Ctrl-C or SIGTERM; publications
go to stdout, gap notices and what the client is doing (connecting, reconnecting and
why) to stderr.
"""

from __future__ import annotations

import asyncio
import signal
import sys

import click

from tidings.cli.options import (
    configure_client_logging,
    fail,
    fail_with,
    server_option,
    verbose_option,
)
from tidings.client.events import GapNotice
from tidings.client.subscription import Subscription, TransportChoice
from tidings.core.publication import parse_position_text
from tidings.core.wire import encode_json, publication_frame
from tidings.errors import ConnectionClosed, TidingsError


@click.command(
    short_help="Print channels' publications as they arrive.",
    epilog="""
\b
Examples:
  tidings subscribe room:45
  tidings subscribe room:45 news --transport sse
  tidings subscribe room:45 --since Xq3v0b1Zc9E:41      resume after a position
  TIDINGS_TOKEN=$(tidings token --user alice --channels 'room:*') tidings subscribe room:45
""",
)
@click.argument("channels", nargs=-1, required=True)
@server_option
@click.option(
    "--token", envvar="TIDINGS_TOKEN", show_envvar=True, default=None, help="A connection JWT."
)
@click.option(
    "--since",
    "since_text",
    default=None,
    help="Resume the (single) channel after <epoch>:<offset>.",
)
@click.option(
    "--transport",
    type=click.Choice(["auto", "ws", "sse", "longpoll", "poll"]),
    default="auto",
    show_default=True,
    help="How to receive: WebSocket, Server-Sent Events, long or short polling, or auto "
    "(WebSocket, else SSE, else long polling).",
)
@click.option(
    "--poll-interval",
    "poll_interval_s",
    type=click.FloatRange(min=0.0),
    default=1.0,
    show_default=True,
    help="Seconds between short polls (--transport poll).",
)
@verbose_option
def subscribe(
    *,
    channels: tuple[str, ...],
    server: str,
    token: str | None,
    since_text: str | None,
    transport: TransportChoice,
    poll_interval_s: float,
    verbose: bool,
) -> None:
    """Print publications of CHANNELS as JSON lines as they arrive (Ctrl-C stops).

    What the client does (connecting, reconnecting and why) is said on stderr.
    """
    configure_client_logging(verbose)
    since = None
    if since_text is not None:
        if len(channels) != 1:
            raise click.BadParameter("--since applies to exactly one channel")
        try:
            since = {channels[0]: parse_position_text(since_text)}
        except TidingsError as exc:
            raise click.BadParameter(str(exc)) from exc
    try:
        subscription = Subscription(
            server,
            channels,
            transport=transport,
            token=token,
            since=since,
            poll_interval_s=poll_interval_s,
        )
    except (TidingsError, ValueError) as exc:
        raise click.BadParameter(str(exc)) from exc
    try:
        asyncio.run(_print_publications(subscription))
    except KeyboardInterrupt:
        pass
    except ConnectionClosed as closed:
        fail(f"server closed the connection ({closed.code}): {closed.reason}")
    except TidingsError as exc:
        fail_with(exc)


async def _print_publications(subscription: Subscription) -> None:
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    # Ctrl-C and SIGTERM end the iteration cleanly instead of a traceback.
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, task.cancel)
    try:
        async for event in subscription:
            if isinstance(event, GapNotice):
                click.echo(
                    f"gap in {event.channel}: publications after {event.since} were lost; "
                    f"now at {event.position}",
                    err=True,
                )
                continue
            sys.stdout.write(encode_json(publication_frame(event)).decode() + "\n")
            sys.stdout.flush()
    except asyncio.CancelledError:
        pass
    finally:
        await subscription.close()
