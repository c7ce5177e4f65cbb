"""The end of a transition of the ring in etcd (DESIGN.md "Consistent hashing mode"):
the givers' ``handed`` keys, and finalizing the ring once every live giver wrote its own.

I/O against etcd through ``etcd.EtcdGateway``: one read of the prefix, and one
compare-and-swap transaction; the decision itself is ``core.handover.finalizable``'s.
Used by ``membership``, whose nodes write the ``handed`` keys and try to finalize.

Theory of operation
-------------------
``<prefix>/handed/<v>/<node_id>``: written by a giver (a node of ``previous``) once it
handed every key it gives in the transition of version ``v``.

Finalizing: when every node of ``previous`` still a member (with a member key) has
written its ``handed`` key for the current version, any node writes ``{v+1, nodes,
previous: null}`` and deletes ``handed/`` in one transaction. A crash bumps the version
(a dead node's removal, ``membership``), so a giver's ``handed`` key of an older version
does not count: it hands again for the new one, whose receivers may differ.
"""

from __future__ import annotations

from collections.abc import Callable

from tidings.brokers.ring.etcd import EtcdGateway, Unchanged
from tidings.brokers.ring.record import decode_ring, encode_ring
from tidings.core.handover import RingRecord, finalizable


async def finalize_transition(
    gateway: EtcdGateway, prefix: str, learn: Callable[[RingRecord], None]
) -> RingRecord | None:
    """End the transition of the ring under ``prefix`` if every live giver handed over.

    Reads the ring, the members and the ``handed`` keys in one read, and gives the ring
    read to ``learn`` before deciding.

    Returns:
        The final ring written, or None: no ring, a settled one, a giver still handing
        over, or a concurrent writer changed the ring first.

    Raises:
        EtcdError: etcd could not be reached, or the ring key holds something else.
    """
    base = prefix.rstrip("/")
    ring_key = f"{base}/ring"
    members_prefix = f"{base}/members/"
    handed_prefix = f"{base}/handed/"
    keys, _ = await gateway.get_prefix(base + "/")
    ring: RingRecord | None = None
    revision = 0
    members: set[str] = set()
    handed_keys: list[str] = []
    for kv in keys:
        if kv.key == ring_key:
            ring, revision = decode_ring(kv.value), kv.mod_revision
        elif kv.key.startswith(members_prefix):
            members.add(kv.key.removeprefix(members_prefix))
        elif kv.key.startswith(handed_prefix):
            handed_keys.append(kv.key.removeprefix(handed_prefix))
    if ring is None:
        return None
    learn(ring)
    if ring.previous is None:
        return None
    handed = {
        node
        for version, _, node in (k.partition("/") for k in handed_keys)
        if version == str(ring.version)
    }
    if not finalizable(ring, members, handed):
        return None
    final = ring.finalized()
    if await gateway.transact(
        [Unchanged(ring_key, revision)],
        {ring_key: encode_ring(final)},
        delete_prefixes=[handed_prefix],
    ):
        return final
    return None
