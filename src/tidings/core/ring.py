"""Which node owns a routing key: the consistent-hash ring, and modulo hashing beside it.

Pure: no I/O, no randomness, no clock. Used by the consistent-hashing mode
(docs/protocol.md §9, docs/modes/hashing.md), where each routing key (``core.routing``)
has exactly one owner node.

Theory of operation
-------------------
Every key and every node is hashed to a 64-bit *point* by a stable hash (BLAKE2b with
an 8-byte digest; never Python's ``hash()``, which is salted per process, so two nodes
would disagree). A node stands at ``vnodes`` points on a circle (``<node>#0``,
``<node>#1``, ...); a key is owned by the node of the first point at or clockwise after
the key's own point, wrapping past the top.

Invariants:

1. **Deterministic**: the owner of a key depends only on the set of node ids and
   ``vnodes``; not on the order nodes were given or added. Two points that collide are
   ordered by node id, so even a collision is decided the same way everywhere.
2. **Minimal movement**: removing a node hands each of its keys to the next point
   clockwise and moves no other key; adding one moves to it only the keys that fall
   just before its points: about 1/(N+1) of them, when N nodes become N+1.

Many points per node (160 by default) smooth the shares: with one point each, a node's
share of the circle varies by as much as the share itself; with V points, by about
1/sqrt(V) of it (8 % at 160).

``ModuloHash`` is the simple alternative, owner = ``sorted(nodes)[point % N]``: even
shares, but adding one node to N moves about N/(N+1) of the keys, since nearly every
key's remainder changes. Both are ``Ownership``; the setting ``placement`` chooses one,
and ``moved_keys`` measures what a change of nodes moves under either.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterable
from typing import Final, Literal, Protocol

DEFAULT_VNODES: Final = 160
POINT_BYTES: Final = 8  # 64-bit points

OwnershipKind = Literal["ring", "modulo"]
OWNERSHIP_KINDS: Final[tuple[OwnershipKind, ...]] = ("ring", "modulo")


def point_of(text: str) -> int:
    """Return the 64-bit point of ``text`` (a routing key, or a node's virtual point).

    Stable across processes, machines and Python versions.
    """
    digest = hashlib.blake2b(text.encode(), digest_size=POINT_BYTES).digest()
    return int.from_bytes(digest, "big")


class Ownership(Protocol):
    """Says which node owns each routing key, from memory."""

    @property
    def nodes(self) -> tuple[str, ...]:
        """The node ids, sorted."""
        ...

    def owner(self, key: str) -> str:
        """Return the id of the node that owns ``key``."""
        ...


def _check_nodes(nodes: Iterable[str]) -> tuple[str, ...]:
    unique = tuple(sorted(set(nodes)))
    if not unique:
        raise ValueError("an ownership needs at least one node")
    return unique


class HashRing:
    """The consistent-hash ring of the module docstring; immutable (``with_node`` and
    ``without_node`` return new rings)."""

    __slots__ = ("_nodes", "_owners", "_points", "vnodes")

    def __init__(self, nodes: Iterable[str], vnodes: int = DEFAULT_VNODES) -> None:
        """Place each of ``nodes`` (ids; repeats count once) at ``vnodes`` points.

        Raises:
            ValueError: no node, or ``vnodes`` below 1.
        """
        if vnodes < 1:
            raise ValueError(f"vnodes must be at least 1, got {vnodes}")
        self._nodes = _check_nodes(nodes)
        self.vnodes = vnodes
        # Sorted by (point, node): a collision is ordered by node id (invariant 1).
        placed = sorted(
            (point_of(f"{node}#{index}"), node) for node in self._nodes for index in range(vnodes)
        )
        self._points = [point for point, _ in placed]
        self._owners = [node for _, node in placed]

    @property
    def nodes(self) -> tuple[str, ...]:
        """The node ids, sorted."""
        return self._nodes

    def owner(self, key: str) -> str:
        """Return the node of the first point at or after ``key``'s point, clockwise."""
        index = bisect.bisect_left(self._points, point_of(key))
        return self._owners[index % len(self._owners)]

    def with_node(self, node: str) -> HashRing:
        """Return this ring with ``node`` added."""
        return HashRing((*self._nodes, node), self.vnodes)

    def without_node(self, node: str) -> HashRing:
        """Return this ring without ``node``.

        Raises:
            ValueError: ``node`` is the last one.
        """
        return HashRing((other for other in self._nodes if other != node), self.vnodes)


class ModuloHash:
    """Owner = ``sorted(nodes)[point(key) % N]``: the alternative the ring is measured against."""

    __slots__ = ("_nodes",)

    def __init__(self, nodes: Iterable[str]) -> None:
        """Share keys among ``nodes`` (ids; repeats count once).

        Raises:
            ValueError: no node.
        """
        self._nodes = _check_nodes(nodes)

    @property
    def nodes(self) -> tuple[str, ...]:
        """The node ids, sorted."""
        return self._nodes

    def owner(self, key: str) -> str:
        """Return the node at ``key``'s point modulo the number of nodes."""
        return self._nodes[point_of(key) % len(self._nodes)]


def ownership_of(
    kind: OwnershipKind, nodes: Iterable[str], vnodes: int = DEFAULT_VNODES
) -> Ownership:
    """Return the ``kind`` of ownership (``"ring"`` or ``"modulo"``) over ``nodes``.

    Raises:
        ValueError: an unknown kind, no node, or ``vnodes`` below 1.
    """
    if kind == "ring":
        return HashRing(nodes, vnodes)
    if kind == "modulo":
        return ModuloHash(nodes)
    raise ValueError(f"ownership must be one of {list(OWNERSHIP_KINDS)}, got {kind!r}")


def moved_keys(old: Ownership, new: Ownership, keys: Iterable[str]) -> set[str]:
    """Return those of ``keys`` whose owner differs between ``old`` and ``new``."""
    return {key for key in keys if old.owner(key) != new.owner(key)}
