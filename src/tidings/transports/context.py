"""What every transport is given: the hub, the session registry, auth and limits. No I/O."""

from __future__ import annotations

import itertools
import secrets
from dataclasses import dataclass, field
from typing import Protocol

from tidings.core.namespace import Namespaces
from tidings.core.permission import Credentials
from tidings.hub.hub import Hub
from tidings.hub.sessions import SessionRegistry
from tidings.transports.refusals import Refusals


class Authenticator(Protocol):
    """Turns a connection token (or its absence) into credentials."""

    @property
    def requires_token(self) -> bool:
        """Whether anonymous connections are refused."""
        ...

    def authenticate(self, token: str | None) -> Credentials:
        """Verify ``token``; raises ``Unauthorized``."""
        ...


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-connection limits (PROTOCOL.md §7)."""

    outbound_buffer_bytes: int = 1024 * 1024
    max_frame_bytes: int = 65_536 + 4096
    max_channels_per_connection: int = 128
    command_rate: float = 100.0
    command_burst: float = 200.0


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
    refusals: Refusals = field(default_factory=Refusals)
    node_id: str = field(default_factory=lambda: secrets.token_urlsafe(6))
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def new_client_id(self) -> str:
        """Return a client id unique among nodes: this node's random id and a counter."""
        return f"{self.node_id}.{next(self._ids)}"
