"""``tidings sources``: set up what a node's sources need in their databases.

I/O: reads the configuration, prints SQL and, once confirmed, runs it in the source's
database. The node never changes the application's schema by itself (it creates only
its own cursor table); installing a trigger on the application's table is this
command's, run by an operator who has read the SQL.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import click

from tidings.cli.options import configure_client_logging, fail, fail_with, verbose_option
from tidings.cli.serve import config_option
from tidings.errors import TidingsError
from tidings.server.config import load_settings
from tidings.sources.registry import create_source
from tidings.sources.table import TableSource, first_line, trigger_install


@click.group(short_help="Set up the sources of a node's configuration ([[sources]]).")
@verbose_option
@click.pass_context
def sources(context: click.Context, *, verbose: bool) -> None:
    """Set up what the sources of the configuration ([[sources]]) need in their databases.

    \b
    Examples:
      tidings sources install-trigger chat --config tidings.toml
      tidings sources -v install-trigger chat --config tidings.toml --yes
    """
    context.obj = verbose  # -v before the subcommand counts as after it


@sources.command("install-trigger")
@click.argument("name")
@config_option
@click.option("--yes", is_flag=True, default=False, help="Run the SQL without asking.")
@verbose_option
@click.pass_context
def install_trigger(
    context: click.Context, *, name: str, config_file: Path | None, yes: bool, verbose: bool
) -> None:
    """Install the trigger that wakes table source NAME on every insert (PostgreSQL).

    Prints the SQL first (a statement-level trigger that NOTIFYs the source), then runs
    it once you confirm (or at once with --yes). Without it the source still reads
    every poll_interval.

    \b
    Examples:
      tidings sources install-trigger chat --config tidings.toml
      tidings sources install-trigger chat --config tidings.toml --yes
    """
    configure_client_logging(verbose or bool(context.obj))
    try:
        settings = load_settings(config_file, os.environ)
        found = [item for item in settings.sources if item.name == name]
        if not found:
            known = ", ".join(item.name for item in settings.sources) or "none"
            fail(f"no source is named {name!r} in the configuration; its sources: {known}")
        source = create_source(found[0])
        if not isinstance(source, TableSource):
            fail(f"source {name!r} is of kind {found[0].kind!r}: only table sources have a trigger")
        install = trigger_install(source)
    except TidingsError as exc:
        fail_with(exc)
    click.echo(f"-- in {install.shown_dsn}:")
    click.echo(install.sql)
    if not yes and not click.confirm("Run this SQL?", default=False):
        fail("not installed")
    try:
        asyncio.run(install.run())
    except Exception as exc:  # the database's own error, in one line
        fail(f"installing the trigger failed: {first_line(exc)}")
    click.echo(f"installed: inserts into {source.settings.relation.table} now wake source {name}")
