"""The ``tidings`` command: serve, publish, subscribe.

I/O: runs uvicorn, makes HTTP calls, prints to the terminal. The only place that
configures logging.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any, Final

import click
import httpx

from tidings.client.events import GapNotice
from tidings.client.subscription import Subscription, TransportChoice
from tidings.core.publication import parse_position_text
from tidings.core.wire import encode_json, publication_frame
from tidings.errors import ConfigError, ConnectionClosed, RequestError, TidingsError
from tidings.server.config import load_settings
from tidings.server.runner import run_node, run_workers

DEFAULT_SERVER: Final = "http://127.0.0.1:8000"


@click.group()
@click.version_option(package_name="tidings")
def main() -> None:
    """tidings: a real-time update server."""


@main.command()
@click.option("--host", default=None, help="Address to bind (default 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port to bind (default 8000).")
@click.option(
    "--broker",
    default=None,
    help="Broker URL: memory (default), redis://host:port/db or redis-cluster://host:port.",
)
@click.option(
    "--data", default=None, help="Directory for the sqlite broker (history survives restarts)."
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path),
    default=None,
    help="A TOML configuration file.",
)
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
    "socket) or uvicorn (the plain ASGI path).",
)
@click.option(
    "--log-level", default="info", type=click.Choice(["debug", "info", "warning", "error"])
)
@click.option(
    "--demo",
    is_flag=True,
    default=False,
    help="Also serve the chat demo at /demo (demo only: it lets clients publish in room:* "
    "and, without a jwt_secret, mints a token for any name).",
)
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
) -> None:
    """Run a tidings node (memory broker by default, sqlite with --data, or --broker URL)."""
    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        arguments = {
            "host": host,
            "port": port,
            "data": data,
            "broker": broker,
            "server_backend": server_backend,
        }
        settings = load_settings(config_file, os.environ, {**arguments, "demo": demo or None})
        if workers < 1:
            raise ConfigError(f"--workers must be at least 1, got {workers}")
        if settings.demo and workers > 1:
            raise ConfigError("--demo runs in one process: its token secret is per process")
    except (ConfigError, TidingsError) as exc:
        raise click.ClickException(str(exc)) from exc
    if workers > 1:
        try:
            sys.exit(run_workers(settings, log_level, workers))
        except ConfigError as exc:
            raise click.ClickException(str(exc)) from exc
    run_node(settings, log_level)


@main.command()
@click.argument("channel")
@click.argument("data")
@click.option(
    "--key", default=None, help="Idempotency key: a retry with it is not published twice."
)
@click.option(
    "--server", default=DEFAULT_SERVER, show_default=True, help="The node's HTTP address."
)
@click.option("--api-key", envvar="TIDINGS_API_KEY", default=None, help="The server API key.")
def publish(channel: str, data: str, key: str | None, server: str, api_key: str | None) -> None:
    """Publish DATA (JSON) in CHANNEL through the server API."""
    try:
        value = json.loads(data)
    except ValueError as exc:
        raise click.BadParameter(f"DATA must be JSON (quote strings: '\"hi\"'): {exc}") from exc
    body: dict[str, Any] = {"channel": channel, "data": value}
    if key is not None:
        body["key"] = key
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        response = httpx.post(f"{server.rstrip('/')}/api/publish", json=body, headers=headers)
    except httpx.HTTPError as exc:
        raise click.ClickException(f"cannot reach {server}: {exc}") from exc
    if response.status_code != 200:
        raise click.ClickException(_error_text(response))
    click.echo(response.text)


def _error_text(response: httpx.Response) -> str:
    try:
        error = response.json()["error"]
        return f"{error['code']}: {error['message']}"
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.status_code}: {response.text[:200]}"


@main.command()
@click.argument("channels", nargs=-1, required=True)
@click.option(
    "--server", default=DEFAULT_SERVER, show_default=True, help="The node's HTTP address."
)
@click.option("--token", envvar="TIDINGS_TOKEN", default=None, help="A connection JWT.")
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
def subscribe(
    *,
    channels: tuple[str, ...],
    server: str,
    token: str | None,
    since_text: str | None,
    transport: TransportChoice,
    poll_interval_s: float,
) -> None:
    """Print publications of CHANNELS as JSON lines as they arrive (Ctrl-C stops)."""
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
        raise click.ClickException(
            f"server closed the connection ({closed.code}): {closed.reason}"
        ) from None
    except RequestError as error:
        raise click.ClickException(f"{error.code}: {error.message}") from None
    except TidingsError as exc:
        raise click.ClickException(str(exc)) from None


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
