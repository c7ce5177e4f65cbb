"""A node's part in a ring kept in etcd (docs/modes/hashing.md): its membership, its
hand-over of channels between owners, and what it does with its local store when the
ring says the store's history of some channels is stale.

Wiring, no I/O of its own: ``RingMember`` (``server.routing``) talks to etcd,
``Handover`` (``server.handover``) to the other nodes. ``NodeRing`` builds them for the
app from the settings:

* the broker the hub uses: the store itself, or, for a ring in etcd over a store that
  can adopt channels (memory, sqlite) with a ``cluster_secret`` to sign the hand-over's
  calls, a ``HandoverBroker`` applying the transition's roles to every publication
  (without one the new owners start the channels they gain in a new epoch: clients
  resuming there hear ``recovered: false``);
* each new ring: the application's keys it gives away are lost (saved) first, then the
  connections it sends elsewhere are moved;
* a lease etcd let expire: others sequenced this node's channels since, so its history
  of them is stale and they start in a new epoch; a channel gained from another node
  without a hand-over (``core.ring_gains``), likewise. The store (``RenewingStore``:
  memory, sqlite) restarts them from the moment it is asked, before anything else is
  sequenced or read there: memory at once; sqlite holds its publishes and reads until
  the file is written. After a lost lease, the node also stays unconfirmed, so fenced
  (``server.ring_fence``), until the restart is done.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from starlette.routing import BaseRoute, Route

from tidings.brokers.base import AdoptingStore, Broker, RenewingStore
from tidings.core.channel import ChannelName
from tidings.core.placement import Placement
from tidings.core.routing import FollowingPlacement
from tidings.errors import BrokerError
from tidings.server.forwarding import OwnerLink
from tidings.server.handover import Handover
from tidings.server.handover_broker import HandoverBroker
from tidings.server.handover_receiver import HANDOVER_PATH
from tidings.server.key_ownership import KeyOwnership
from tidings.server.ring_fence import RingFence
from tidings.server.ring_moves import RingMover
from tidings.server.routing import RingMember
from tidings.server.settings import Settings

logger = logging.getLogger(__name__)


class NodeRing:
    """What a node needs of the ring in etcd; see the module docstring."""

    def __init__(
        self,
        settings: Settings,
        placement: Placement,
        store: Broker,
        link: Callable[[], OwnerLink],
        *,
        mover: RingMover,
        keys: KeyOwnership,
    ) -> None:
        """Take part, as ``settings`` say, in the ring ``placement`` follows, over the
        node's local ``store``; ``link()`` is the node's link to the other owners (made
        after this), ``mover`` moves its connections, ``keys`` its application's keys."""
        self._store = store
        self._mover = mover
        self._keys = keys
        self._node_id = settings.node_id
        self._placement = placement
        self._restarting: set[asyncio.Future[None]] = set()  # restarts reported when done
        following = placement if isinstance(placement, FollowingPlacement) else None
        self.broker: Broker = store
        """The broker the hub uses."""
        self.handover: Handover | None = None
        """The node's hand-over of channels, if it takes part in them."""
        if (
            settings.ring_etcd is not None
            and settings.cluster_secret is not None
            and following is not None
            and isinstance(store, AdoptingStore)
        ):
            timeout_s = settings.handover_timeout_s
            self.broker = HandoverBroker(store, following, link, timeout_s=timeout_s)
            self.handover = Handover(
                settings.node_id,
                following,
                self.broker,
                link,
                mover,
                timeout_s=timeout_s,
                release=keys.release_where,
            )
        self.member: RingMember | None = (
            RingMember(
                settings,
                following,
                self._on_ring,
                self.handover,
                on_lease_lost=self._on_lease_lost,
                on_gain=self._on_gain,
            )
            if settings.ring_etcd is not None and following is not None
            else None
        )
        """The node's membership of the ring in etcd (``ring_etcd``): joined at start,
        left when the node drains."""

    def fence(self) -> RingFence | None:
        """The hub's fence: a member of the ring in etcd sequences its channels only
        while its lease is confirmed (``server.ring_fence``)."""
        return None if self.member is None else RingFence(self._placement, self.member)

    def routes(self) -> list[BaseRoute]:
        """``POST /node/handover``, for a node that takes part in hand-overs."""
        if self.handover is None:
            return []
        return [Route(HANDOVER_PATH, self.handover.receiver.receive, methods=["POST"])]

    def _on_ring(self) -> None:
        """A new ring reached the placement: lose the application's keys it gives to
        other nodes (their state is saved), then move the connections it sends elsewhere."""
        self._keys.receive_ring(then=self._mover.receive_ring)

    async def _on_lease_lost(self) -> None:
        """etcd let this node's lease expire: its channels went to other nodes, which
        sequenced them since. Its own history of them is stale; start them anew, in a
        new epoch, so that no client resumes across the gap (``recovered: false``).
        Awaited before the node joins again: its lease stays unconfirmed until then."""
        store = self._store
        if not isinstance(store, RenewingStore):
            logger.warning(
                "node %s lost its lease in etcd, and its %s broker cannot start a new "
                "epoch: clients resuming here may miss what other nodes sequenced meanwhile",
                self._node_id,
                type(store).__name__,
            )
            return
        try:
            await store.start_new_epoch()
        except BrokerError as error:
            logger.warning(
                "node %s lost its lease in etcd but could not start a new epoch (%s): "
                "clients resuming here may miss what other nodes sequenced meanwhile",
                self._node_id,
                error,
            )
            return
        logger.warning(
            "node %s lost its lease in etcd: its channels start in a new epoch", self._node_id
        )

    def _on_gain(self, gained: Callable[[ChannelName], bool]) -> None:
        """A new ring gave this node channels another node sequenced meanwhile: what it
        holds of them is stale; restart them in a new epoch (``core.ring_gains``). Called
        in the step that takes the new ring, and so is the store: it holds the channels
        from then on (sqlite until the restart is written; memory is done at once)."""
        store = self._store
        if not isinstance(store, RenewingStore):
            return
        try:
            restarting = store.restart_channels(gained)
        except BrokerError as error:  # the store is closing: nothing is served from it
            logger.warning("channels gained from another node were not restarted: %s", error)
            return
        task = asyncio.ensure_future(self._report_restart(restarting))
        self._restarting.add(task)
        task.add_done_callback(self._restarting.discard)

    async def _report_restart(self, restarting: Awaitable[int]) -> None:
        try:
            restarted = await restarting
        except BrokerError as error:
            logger.warning(
                "channels gained from another node could not start a new epoch (%s): "
                "clients resuming here may miss what it sequenced",
                error,
            )
            return
        if restarted:
            logger.info("%d channels gained from another node start in a new epoch", restarted)
