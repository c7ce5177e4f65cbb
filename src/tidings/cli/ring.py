"""``tidings ring status|join|leave``: the ring of the consistent-hashing mode as the
configuration describes it, and planned changes of a ring kept in etcd
(docs/modes/hashing.md, "Scaling without loss").

I/O: reads the configuration (file and environment) and, for a ring kept in etcd
(``ring_etcd``), etcd over its JSON gateway; prints to the terminal. ``status`` shows
the ring's version, its nodes and their URLs, which of them hold a live lease in etcd
(a member joining is listed before its place in the ring is written; a node whose
lease expired is about to be taken out) and, in a transition, the nodes it moves from.
``join`` and ``leave`` write a planned change in etcd (from a settled ring, waiting for
a transition under way) and wait until the nodes made it final: the nodes watching
etcd hand the moving channels over themselves. ``join`` brings in a member that is
not in the ring (a node started with ``ring_join = false``, or one that left);
``leave`` takes a node out while it keeps running, serving nothing new once final.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import click

from tidings.brokers.ring.etcd import EtcdGateway
from tidings.brokers.ring.record import (
    RingView,
    change_planned_ring,
    read_ring_view,
    wait_settled,
)
from tidings.cli.options import configure_client_logging, fail_with, verbose_option
from tidings.cli.serve import config_option
from tidings.core.handover import RingRecord
from tidings.errors import ConfigError, TidingsError
from tidings.server.config import load_settings
from tidings.server.settings import Settings
from tidings.server.units import parse_duration_s


@click.group(short_help="Show or change the ring of the consistent-hashing mode.")
@verbose_option
@click.pass_context
def ring(context: click.Context, *, verbose: bool) -> None:
    """Show the ring of the consistent-hashing mode (ring_nodes, or ring_etcd), or
    change a ring kept in etcd (join, leave).

    \b
    Examples:
      tidings ring status --config tidings.toml
      TIDINGS_RING_ETCD=http://10.0.0.9:2379 tidings ring status --json
      tidings ring join --node c --config tidings.toml
      tidings ring leave --node b --config tidings.toml
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


F = TypeVar("F", bound=Callable[..., None])


def _planned_change_options(node_help: str) -> Callable[[F], F]:
    """The options of ``join`` and ``leave``: the configuration, ``--node`` (helped by
    ``node_help``), ``--timeout`` and ``-v``."""

    def decorate(command: F) -> F:
        options = [
            config_option,
            click.option("--node", "node_id", required=True, help=node_help),
            click.option(
                "--timeout",
                "timeout",
                default="120s",
                show_default=True,
                help="How long to wait for a transition under way, then for this one to be final.",
            ),
            verbose_option,
        ]
        for option in reversed(options):  # as if stacked as decorators, in this order
            command = option(command)
        return command

    return decorate


@ring.command("join")
@_planned_change_options("The member to bring into the ring.")
@click.pass_context
def join(
    context: click.Context, *, config_file: Path | None, node_id: str, timeout: str, verbose: bool
) -> None:
    """Bring member NODE into the ring kept in etcd: a planned join. The node must be
    running (a member: it holds a lease), e.g. started with ring_join = false, or taken
    out with tidings ring leave. The nodes hand it the channels it gains, then the ring
    is made final; this waits for that.

    \b
    Examples:
      tidings ring join --node c --config tidings.toml
    """
    _change(context, config_file, node_id, timeout, verbose=verbose, joining=True)


@ring.command("leave")
@_planned_change_options("The node to take out of the ring.")
@click.pass_context
def leave(
    context: click.Context, *, config_file: Path | None, node_id: str, timeout: str, verbose: bool
) -> None:
    """Take NODE out of the ring kept in etcd: a planned leave. The node hands its
    channels over and moves its clients to their new owners, then the ring is made
    final; this waits for that. The node keeps running, a member serving nothing new,
    until it is stopped (or joined again).

    \b
    Examples:
      tidings ring leave --node b --config tidings.toml
    """
    _change(context, config_file, node_id, timeout, verbose=verbose, joining=False)


def _change(
    context: click.Context,
    config_file: Path | None,
    node_id: str,
    timeout: str,
    *,
    verbose: bool,
    joining: bool,
) -> None:
    configure_client_logging(verbose or bool(context.obj))
    try:
        timeout_s = parse_duration_s("--timeout", timeout)
        settings = load_settings(config_file, os.environ)
        if settings.ring_etcd is None:
            raise ConfigError(
                "tidings ring join and leave change a ring kept in etcd: set ring_etcd"
            )
        final = asyncio.run(
            _change_in_etcd(
                settings.ring_etcd, settings.ring_prefix, node_id, timeout_s, joining=joining
            )
        )
    except TidingsError as exc:
        fail_with(exc)
    where = "in" if joining else "out of"
    click.echo(
        f"node {node_id} is {where} the ring: version {final.version}, "
        f"nodes {', '.join(sorted(final.nodes)) or '(none)'}"
    )


async def _change_in_etcd(
    url: str, prefix: str, node_id: str, timeout_s: float, *, joining: bool
) -> RingRecord:
    """Write the planned change, then wait until the ring is final; return it.

    Raises:
        ConfigError: the node cannot be joined (not a member) or left (not in the ring).
        EtcdError: etcd failed, or the ring was not final within ``timeout_s``.
    """
    gateway = EtcdGateway(url)
    try:
        view = await read_ring_view(gateway, prefix)
        if joining:
            member_url = view.members.get(node_id)
            if member_url is None:
                raise ConfigError(
                    f"node {node_id} is not a member of the ring under {prefix}: start it "
                    "with ring_etcd set (and ring_join = false to wait for this command)"
                )
            change = _joining(node_id, member_url)
        else:
            if node_id not in view.ring.nodes:
                raise ConfigError(f"node {node_id} is not in the ring under {prefix}")
            change = _leaving(node_id)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        await change_planned_ring(gateway, prefix, change, timeout_s=timeout_s)
        return await wait_settled(gateway, prefix, max(0.0, deadline - loop.time()))
    finally:
        await gateway.aclose()


def _joining(node_id: str, url: str) -> Callable[[RingRecord], RingRecord]:
    return lambda ring: ring.joined(node_id, url)


def _leaving(node_id: str) -> Callable[[RingRecord], RingRecord]:
    return lambda ring: ring.left(node_id)


def _status_of(settings: Settings) -> dict[str, object]:
    """The ring the settings name, as JSON-ready fields."""
    if settings.ring_etcd is not None:
        view = asyncio.run(_read_view(settings.ring_etcd, settings.ring_prefix))
        members = dict(view.members)
        nodes = {
            node: {"url": url, "member": node in members}
            for node, url in sorted(view.ring.nodes.items())
        }
        previous = view.ring.previous or {}
        joining = {
            node: url
            for node, url in sorted(members.items())
            if node not in nodes and node not in previous
        }
        answer: dict[str, object] = {
            "kept": "etcd",
            "etcd": settings.ring_etcd,
            "prefix": settings.ring_prefix,
            "placement": settings.placement,
            "version": view.ring.version,
            "nodes": nodes,
            "joining": joining,
        }
        if view.ring.previous is not None:
            # In transition: the nodes it moves from (those leaving are among them only).
            answer["previous"] = dict(sorted(previous.items()))
        return answer
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
    previous = answer.get("previous")
    if isinstance(previous, dict):
        lines.append(
            "  in transition from: "
            + ", ".join(previous)
            + " (handing channels over; tidings ring join/leave wait for it to be final)"
        )
        for node, url in previous.items():
            if node not in nodes:
                lines.append(f"  {node}  {url}  leaving: handing its channels over")
    joining = answer.get("joining")
    if isinstance(joining, dict):
        for node, url in joining.items():
            lines.append(f"  {node}  {url}  member, not in the ring yet: joining")
    return "\n".join(lines)
