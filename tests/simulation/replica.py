"""How a receiver's copy of a channel takes a giver's hand-over message.

``decide_replica`` (the core) has already said the message is to be applied; this
stores its publications, starting a new copy when the message is of another epoch or a
snapshot that does not follow what is held. Pure over the simulated store: the node
keeps the store returned, fans out the publications newly stored, and acks.
"""

from __future__ import annotations

from collections.abc import Iterable

from tests.simulation.messages import Replica
from tests.simulation.store import ChannelStore, SimPublication


def apply_replica(
    store: ChannelStore | None, message: Replica, history_size: int, *, force: bool = False
) -> tuple[ChannelStore, list[SimPublication]]:
    """Apply ``message`` to ``store`` (``None``: none held yet).

    Args:
        store: The receiver's copy of the channel, if any.
        message: The giver's snapshot or stream message.
        history_size: How many publications a new copy retains.
        force: The ``ignore_resync`` flaw: store what follows the top, hole or not.

    Returns:
        The copy now held (``store`` or a new one) and the publications newly stored.
    """
    publications = message.publications
    replace = store is None or store.epoch != message.epoch
    if message.snapshot and store is not None and not replace:
        # The snapshot does not follow what is held (history evicted in between):
        # it replaces it, or the history would have a hole.
        replace = message.first.offset > store.top + 1
    if replace:
        store = ChannelStore(message.epoch, history_size)
        store.top = message.first.offset - 1
        if message.snapshot:
            stored = store.adopt(publications)
            store.top = message.top
            return store, stored
    assert store is not None
    if force:
        return store, force_adopt(store, publications)
    return store, store.adopt(publications)


def force_adopt(
    store: ChannelStore, publications: Iterable[SimPublication]
) -> list[SimPublication]:
    """The ``ignore_resync`` flaw: store whatever comes after the top, hole or not."""
    stored = []
    for publication in publications:
        if publication.offset > store.top:
            store.retained.append(publication)
            store.top = publication.offset
            store.keys[publication.key] = publication.position
            stored.append(publication)
    return stored
