"""``tidings token``: sign a connection token (docs/protocol.md §8) with the node's secret.

I/O: reads the configuration as ``tidings serve`` does (file, then ``TIDINGS_*``), and
prints the token. Always HS256 with ``jwt_secret``, always with an ``exp`` (``--ttl``).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import click
import jwt

from tidings.cli.options import configure_client_logging, fail, fail_with, verbose_option
from tidings.cli.serve import config_option
from tidings.errors import TidingsError
from tidings.server.config import load_settings
from tidings.server.units import parse_duration_s

NO_SECRET = (
    "no jwt_secret is configured: set TIDINGS_JWT_SECRET (or jwt_secret in --config) to "
    "the node's secret. (A --demo node without one makes its own per process: get its "
    "tokens from POST /demo/token.)"
)


@click.command(
    short_help="Print a connection token signed with the node's secret.",
    epilog="""
\b
Examples:
  tidings token --user alice --channels 'room:*' --ttl 1h
  tidings token --user bob --channels room:45,user:bob --config tidings.toml
  export TIDINGS_TOKEN=$(tidings token --user alice)   then: tidings subscribe room:45
\b
The secret is the node's jwt_secret, read as tidings serve reads it: --config, then
TIDINGS_JWT_SECRET.
""",
)
@click.option("--user", required=True, help="Who the token names (the sub claim).")
@click.option(
    "--channels",
    "channel_args",
    multiple=True,
    help="Channels or patterns (room:*) the token grants (the channels claim); "
    "comma-separated or repeated. Without it, the namespaces' policies decide.",
)
@click.option(
    "--ttl", default="1h", show_default=True, help="How long the token is valid: 30m, 1h, 7d."
)
@config_option
@verbose_option
def token(
    *,
    user: str,
    channel_args: tuple[str, ...],
    ttl: str,
    config_file: Path | None,
    verbose: bool,
) -> None:
    """Print a connection token for USER signed with the node's jwt_secret (HS256)."""
    configure_client_logging(verbose)
    try:
        settings = load_settings(config_file, os.environ)
        ttl_s = parse_duration_s("--ttl", ttl)
    except TidingsError as exc:
        fail_with(exc)
    if ttl_s <= 0:
        fail("--ttl must be more than 0")
    if settings.jwt_secret is None:
        fail(NO_SECRET)
    now = int(time.time())
    claims: dict[str, object] = {"sub": user, "iat": now, "exp": now + max(1, round(ttl_s))}
    channels = [part.strip() for arg in channel_args for part in arg.split(",") if part.strip()]
    if channels:
        claims["channels"] = channels
    click.echo(jwt.encode(claims, settings.jwt_secret, algorithm="HS256"))
