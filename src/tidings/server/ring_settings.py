"""The settings of owner routing (docs/modes/hashing.md), and the check of a ring's.

Pure. ``ring_nodes`` (a static ring) or ``ring_etcd`` (membership in etcd: one client
URL, or several members' separated by commas), how keys are placed among the nodes, and
the secret the nodes share to sign the calls they forward to a channel's owner.
``RING_PARSERS`` is the part of ``config.py``'s table of settings these own;
``check_ring`` refuses, once every source is merged, a ring this node could not serve
in.

The broker URL ``ring+etcd://host:port[,host:port...][?prefix=/tidings/ring&ttl=10s]``
is the issue's spelling of the same: membership in etcd at those members, with the
node's own embedded broker (memory, or sqlite with ``data``) as the store of the
channels it owns. ``with_ring_broker`` turns it into ``ring_etcd``, ``ring_prefix``
and ``ring_ttl`` once every source is merged.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any, Final
from urllib.parse import parse_qsl

from tidings.brokers.ring.etcd import parse_endpoints
from tidings.core.node_call import MIN_CLUSTER_SECRET_BYTES
from tidings.core.ring import OWNERSHIP_KINDS, OwnershipKind
from tidings.errors import ConfigError
from tidings.server.settings import Settings
from tidings.server.settings_parsers import (
    check_node_id,
    check_public_url,
    parse_bool,
    parse_count,
    parse_float,
    parse_secret,
    parse_str,
)
from tidings.server.units import parse_duration_s


def parse_ring_nodes(name: str, value: object) -> dict[str, str]:
    """``{node_id = "base URL"}`` (a TOML table), or ``id=url,id=url`` (the environment)."""
    if isinstance(value, str):
        pairs = [part.strip().partition("=") for part in value.split(",") if part.strip()]
        if any(not sep for _, sep, _ in pairs):
            raise ConfigError(f"{name} must be node_id=url pairs separated by commas")
        value = {node.strip(): url.strip() for node, _, url in pairs}
    if not isinstance(value, Mapping):
        raise ConfigError(f'{name} must be a table such as {{a = "http://10.0.0.1:8000"}}')
    return {
        check_node_id(f"{name} key", parse_str(name, node)): check_public_url(
            f"{name}.{node}", parse_str(f"{name}.{node}", url)
        )
        for node, url in value.items()
    }


def parse_ring_prefix(name: str, value: object) -> str:
    """An etcd key prefix: ``/`` and at least one more character."""
    text = parse_str(name, value)
    if not text.startswith("/") or len(text) < 2:
        raise ConfigError(f"{name} must be an etcd key prefix such as /tidings/ring, got {text!r}")
    return text


def parse_ring_etcd(name: str, value: object) -> str:
    """etcd client URLs (``http://host:2379``), comma-separated or a list in the file,
    kept as one comma-separated string."""
    if isinstance(value, list):
        value = ",".join(parse_str(name, part) for part in value)
    parts = [part.strip() for part in parse_str(name, value).split(",") if part.strip()]
    if not parts:
        raise ConfigError(f"{name} must name at least one etcd client URL such as http://host:2379")
    return ",".join(check_public_url(name, part).rstrip("/") for part in parts)


RING_BROKER_SCHEME: Final = "ring+etcd://"
_RING_BROKER_FORM: Final = "ring+etcd://host:port[,host:port...][?prefix=/tidings/ring&ttl=10s]"


def is_ring_broker(broker: str | None) -> bool:
    """Whether ``broker`` is a ``ring+etcd://`` URL."""
    return broker is not None and broker.lower().startswith(RING_BROKER_SCHEME)


def with_ring_broker(settings: Settings) -> Settings:
    """Read a ``ring+etcd://`` broker URL into the ring's settings (module docstring);
    other settings are returned as they are.

    Raises:
        ConfigError: the URL names no member, a bad one, an unknown option, or
            ``ring_etcd`` is set too.
    """
    broker = settings.broker
    if broker is None or not is_ring_broker(broker):
        return settings
    hosts, _, query = broker[len(RING_BROKER_SCHEME) :].partition("?")
    hosts = hosts.rstrip("/")
    if settings.ring_etcd is not None:
        raise ConfigError(f"broker {broker!r} names etcd already: leave ring_etcd unset")
    changes: dict[str, Any] = {"broker": None}
    # Every member is host:port, reached over http (etcd's client port without TLS;
    # ring_etcd takes https:// URLs).
    try:
        changes["ring_etcd"] = ",".join(
            parse_endpoints(
                ",".join(f"http://{host.strip()}" for host in hosts.split(",") if host.strip())
            )
        )
    except ValueError as exc:
        raise ConfigError(f"broker {broker!r}: {exc}; use {_RING_BROKER_FORM}") from None
    for option, value in parse_qsl(query, keep_blank_values=True, strict_parsing=False):
        if option == "prefix":
            changes["ring_prefix"] = parse_ring_prefix(f"broker {broker!r} prefix", value)
        elif option == "ttl":
            changes["ring_ttl_s"] = parse_duration_s(f"broker {broker!r} ttl", value)
        else:
            raise ConfigError(
                f"broker {broker!r}: unknown option {option!r}; known: prefix, ttl "
                f"({_RING_BROKER_FORM})"
            )
    return replace(settings, **changes)


def parse_placement(name: str, value: object) -> OwnershipKind:
    """One of the ways of placing keys among the nodes (``core.ring.OWNERSHIP_KINDS``)."""
    for kind in OWNERSHIP_KINDS:
        if value == kind:
            return kind
    raise ConfigError(f"{name} must be one of {list(OWNERSHIP_KINDS)}, got {value!r}")


# Each ring setting's parser, by its configuration name (``ring_ttl`` is the field
# ``ring_ttl_s``: config.py maps the names of every setting to their fields).
RING_PARSERS: Final[dict[str, Callable[[str, object], Any]]] = {
    "ring_nodes": parse_ring_nodes,
    "placement": parse_placement,
    "ring_vnodes": parse_count,
    "ring_etcd": parse_ring_etcd,
    "ring_prefix": parse_ring_prefix,
    "ring_ttl": parse_duration_s,
    "cluster_secret": parse_secret,
    "ring_move_rate": parse_float,
    "handover_timeout": parse_duration_s,
    "ring_join": parse_bool,
}


def check_ring(settings: Settings) -> None:
    """Refuse a ring this node is not part of (it would send every client away).

    Raises:
        ConfigError: ``ring_nodes`` is set and does not name ``node_id``.
    """
    nodes = settings.ring_nodes
    if nodes and settings.ring_etcd is not None:
        raise ConfigError(
            "set ring_nodes (a static ring) or ring_etcd (membership in etcd), not both"
        )
    if settings.ring_etcd is not None and settings.ring_ttl_s < 2:
        raise ConfigError(f"ring_ttl must be at least 2s, got {settings.ring_ttl_s:g}s")
    secret = settings.cluster_secret
    if secret is not None and len(secret.encode()) < MIN_CLUSTER_SECRET_BYTES:
        raise ConfigError(
            f"cluster_secret is {len(secret.encode())} bytes; it needs at least "
            f"{MIN_CLUSTER_SECRET_BYTES}: python -c 'import secrets; "
            "print(secrets.token_urlsafe(32))'"
        )
    if settings.ring_move_rate <= 0:
        raise ConfigError(f"ring_move_rate must be more than 0, got {settings.ring_move_rate:g}")
    if settings.handover_timeout_s <= 0:
        raise ConfigError(
            f"handover_timeout must be more than 0s, got {settings.handover_timeout_s:g}s"
        )
    if nodes and settings.node_id not in nodes:
        raise ConfigError(
            f"node_id {settings.node_id!r} is not in ring_nodes {sorted(nodes)}: "
            "set node_id to this node's entry"
        )
