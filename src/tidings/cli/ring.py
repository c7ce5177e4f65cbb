"""``tidings ring status``: the ring of the consistent-hashing mode as the
configuration describes it (docs/modes/hashing.md).

I/O: reads the configuration (file and environment) and, for a ring kept in etcd
(``ring_etcd``), etcd over its JSON gateway; prints to the terminal. It shows the
ring's version, its nodes and their URLs, and which of them hold a live lease in etcd
(a member joining is listed before its place in the ring is written; a node whose
lease expired is about to be taken out).
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import click

from tidings.brokers.ring.etcd import EtcdGateway
from tidings.brokers.ring.membership import RingView, read_ring_view
from tidings.cli.options import configure_client_logging, fail_with, verbose_option
from tidings.cli.serve import config_option
from tidings.errors import TidingsError
from tidings.server.config import load_settings
from tidings.server.settings import Settings


@click.group(short_help="Show the ring of the consistent-hashing mode.")
@verbose_option
@click.pass_context
def ring(context: click.Context, *, verbose: bool) -> None:
    """Show the ring of the consistent-hashing mode (ring_nodes, or ring_etcd).

    \b
    Examples:
      tidings ring status --config tidings.toml
      TIDINGS_RING_ETCD=http://10.0.0.9:2379 tidings ring status --json
    """
    context.obj = verbose  # -v before the subcommand counts as after it


@ring.command("status")
@config_option
@click.option("--json", "as_json", is_flag=True, default=False, help="Print JSON.")
@verbose_option
@click.pass_context
def status(
    context: click.Context, *, config_file: Path | None, as_json: bool, verbose: bool
) -> None:
    """Show the ring: where it is kept, its version, its nodes and their URLs; for a
    ring in etcd, which nodes hold a live lease (members).

    The ring is the one the configuration (file and TIDINGS_* environment) names: a
    static ring_nodes table (version 0), or the ring kept in etcd at ring_etcd under
    ring_prefix.

    \b
    Examples:
      tidings ring status --config tidings.toml
      tidings ring status --json
    """
    configure_client_logging(verbose or bool(context.obj))
    try:
        settings = load_settings(config_file, os.environ)
        answer = _status_of(settings)
    except TidingsError as exc:
        fail_with(exc)
    if as_json:
        click.echo(json.dumps(answer, indent=2))
        return
    click.echo(_text_of(answer))


def _status_of(settings: Settings) -> dict[str, object]:
    """The ring the settings name, as JSON-ready fields."""
    if settings.ring_etcd is not None:
        view = asyncio.run(_read_view(settings.ring_etcd, settings.ring_prefix))
        members = dict(view.members)
        nodes = {
            node: {"url": url, "member": node in members}
            for node, url in sorted(view.ring.nodes.items())
        }
        joining = {node: url for node, url in sorted(members.items()) if node not in nodes}
        return {
            "kept": "etcd",
            "etcd": settings.ring_etcd,
            "prefix": settings.ring_prefix,
            "placement": settings.placement,
            "version": view.ring.version,
            "nodes": nodes,
            "joining": joining,
        }
    if settings.ring_nodes:
        return {
            "kept": "static",
            "placement": settings.placement,
            "version": 0,
            "nodes": {node: {"url": url} for node, url in sorted(settings.ring_nodes.items())},
        }
    return {"kept": "none", "version": 0, "nodes": {}}


async def _read_view(url: str, prefix: str) -> RingView:
    gateway = EtcdGateway(url)
    try:
        return await read_ring_view(gateway, prefix)
    finally:
        await gateway.aclose()


def _text_of(answer: dict[str, object]) -> str:
    kept = answer["kept"]
    if kept == "none":
        return "no ring (neither ring_nodes nor ring_etcd is set): every node serves every channel"
    if kept == "static":
        lines = [f"static ring (ring_nodes), placement {answer['placement']}, version 0"]
    else:
        lines = [
            f"ring in etcd {answer['etcd']} under {answer['prefix']}, "
            f"placement {answer['placement']}, version {answer['version']}"
        ]
    nodes = answer["nodes"]
    assert isinstance(nodes, dict)  # built by _status_of
    if not nodes:
        lines.append("no node in the ring")
    for node, fields in nodes.items():
        member = fields.get("member")
        lease = "" if member is None else ("  member" if member else "  no lease: being removed")
        lines.append(f"  {node}  {fields['url']}{lease}")
    joining = answer.get("joining")
    if isinstance(joining, dict):
        for node, url in joining.items():
            lines.append(f"  {node}  {url}  member, not in the ring yet: joining")
    return "\n".join(lines)
