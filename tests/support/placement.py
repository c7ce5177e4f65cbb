"""A fake ``Placement`` (core/placement.py): this node serves every channel but those the
test says another node owns, as the consistent-hashing mode will say."""

from __future__ import annotations

from tidings.core.channel import ChannelName
from tidings.core.placement import HERE, Here, Moved

OWNER_URL = "https://node-b.example:8443"


class ElsewherePlacement:
    """Serves every channel here except those in ``elsewhere`` (a set the test may change
    while a node runs), owned by the node at ``owner_url``."""

    def __init__(self, *elsewhere: str, owner_url: str = OWNER_URL) -> None:
        self.elsewhere = set(elsewhere)
        self.owner_url = owner_url

    def place(self, channel: ChannelName) -> Here | Moved:
        return Moved(self.owner_url) if channel in self.elsewhere else HERE
