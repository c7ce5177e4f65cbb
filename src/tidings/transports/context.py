"""What every transport is given: the hub, the session registry, auth, limits, where
channels are served, and the node's shared deadlines (one timer per grain). No I/O of
its own."""

from __future__ import annotations

import itertools
import secrets
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Final, Protocol

from tidings.core.namespace import Namespaces
from tidings.core.permission import Credentials
from tidings.core.placement import LOCAL_PLACEMENT, Placement
from tidings.hub.hub import Hub
from tidings.hub.sessions import SessionRegistry
from tidings.transports.deadlines import Deadlines
from tidings.transports.refusals import Refusals

# Connection deadlines (the ``connect`` command's, tokens' expiries) fire at most this late:
# those due within the same second share one timer.
DEADLINE_GRAIN_S: Final = 1.0


class Authenticator(Protocol):
    """Turns a connection token (or its absence) into credentials."""

    @property
    def requires_token(self) -> bool:
        """Whether anonymous connections are refused."""
        ...

    def authenticate(self, token: str | None) -> Credentials:
        """Verify ``token``; raises ``Unauthorized``."""
        ...

    def pending_keys(self, token: str | None) -> Awaitable[None] | None:
        """What to await before ``authenticate`` can find the token's key, if anything."""
        ...


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-connection limits (docs/protocol.md §7)."""

    outbound_buffer_bytes: int = 1024 * 1024
    max_frame_bytes: int = 65_536 + 4096
    max_channels_per_connection: int = 128
    command_rate: float = 100.0
    command_burst: float = 200.0
    # How long a WebSocket that must authenticate may wait for its ``connect``; 0: forever.
    connect_timeout_s: float = 10.0


@dataclass(slots=True)
class TransportContext:
    """Shared by every connection of one node."""

    hub: Hub
    sessions: SessionRegistry
    authenticator: Authenticator
    namespaces: Namespaces
    limits: Limits
    ping_interval_s: float
    allowed_origins: tuple[str, ...] = ()
    draining: bool = False
    # Which channels this node serves (docs/protocol.md §9); all of them but in hashing mode.
    placement: Placement = LOCAL_PLACEMENT
    refusals: Refusals = field(default_factory=Refusals)
    deadlines: Deadlines = field(default_factory=lambda: Deadlines(DEADLINE_GRAIN_S))
    node_id: str = field(default_factory=lambda: secrets.token_urlsafe(6))
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def new_client_id(self) -> str:
        """Return a client id unique among nodes: this node's random id and a counter."""
        return f"{self.node_id}.{next(self._ids)}"
