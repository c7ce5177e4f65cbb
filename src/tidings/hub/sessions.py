"""The client sessions connected to this node, by id and by user. No I/O.

Used to disconnect a user's sessions (server API), to drain on shutdown, to send
heartbeats from one timer, and to enforce the per-node connection limit, and within
it the smaller allowance of sessions that have not authenticated yet (a WebSocket
waiting for its ``connect`` command), so that sockets which never authenticate cannot
take every slot. Bookkeeping only; ``wait_empty`` is the one thing here to await.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Protocol

from tidings.errors import TooManyRequests


class Session(Protocol):
    """A connected client as the server sees it."""

    @property
    def client_id(self) -> str:
        """The connection's id, unique on this node."""
        ...

    @property
    def user(self) -> str:
        """The authenticated user id, ``""`` if anonymous."""
        ...

    def disconnect(
        self, code: int, reason: str, *, reconnect: bool, delay_ms: int | None = None
    ) -> None:
        """Tell the client why (and, with ``delay_ms``, how long to wait before it comes
        back), then close its connection with ``code``."""
        ...

    def heartbeat(self, now_s: float) -> None:
        """Send a heartbeat if nothing was sent for the ping interval (monotonic seconds)."""
        ...


class SessionRegistry:
    """Connected sessions, at most ``limit`` at once, of which at most
    ``unauthenticated_limit`` not authenticated yet."""

    __slots__ = (
        "_by_id",
        "_by_user",
        "_empty",
        "_unauthenticated",
        "limit",
        "unauthenticated_limit",
    )

    def __init__(self, limit: int, unauthenticated_limit: int | None = None) -> None:
        self.limit = limit
        self.unauthenticated_limit = (
            limit if unauthenticated_limit is None else unauthenticated_limit
        )
        self._unauthenticated: set[str] = set()
        self._by_id: dict[str, Session] = {}
        self._by_user: dict[str, set[str]] = {}
        self._empty = asyncio.Event()
        self._empty.set()

    def add(self, session: Session, *, authenticated: bool = True) -> None:
        """Register a new session; one not ``authenticated`` yet counts in the smaller
        allowance until ``mark_authenticated``.

        Raises:
            TooManyRequests: the node already holds ``limit`` sessions, or
                ``unauthenticated_limit`` unauthenticated ones and this is one more.
        """
        if len(self._by_id) >= self.limit:
            raise TooManyRequests(
                f"this node holds {self.limit:,} connections, its limit; try another node or later"
            )
        if not authenticated:
            if len(self._unauthenticated) >= self.unauthenticated_limit:
                raise TooManyRequests(
                    f"this node holds {self.unauthenticated_limit:,} connections that have not "
                    "authenticated, its limit; send a token with the handshake or try later"
                )
            self._unauthenticated.add(session.client_id)
        self._by_id[session.client_id] = session
        self._by_user.setdefault(session.user, set()).add(session.client_id)
        self._empty.clear()

    def mark_authenticated(self, session: Session) -> None:
        """``session`` authenticated: it no longer counts in the unauthenticated allowance."""
        self._unauthenticated.discard(session.client_id)

    def rename(self, session: Session, old_user: str) -> None:
        """Re-index ``session`` after it authenticated as another user."""
        ids = self._by_user.get(old_user)
        if ids is not None:
            ids.discard(session.client_id)
            if not ids:
                del self._by_user[old_user]
        self._by_user.setdefault(session.user, set()).add(session.client_id)

    def remove(self, session: Session) -> None:
        """Forget a session that ended; idempotent."""
        if self._by_id.pop(session.client_id, None) is None:
            return
        self._unauthenticated.discard(session.client_id)
        ids = self._by_user.get(session.user)
        if ids is not None:
            ids.discard(session.client_id)
            if not ids:
                del self._by_user[session.user]
        if not self._by_id:
            self._empty.set()

    async def wait_empty(self) -> None:
        """Return once no session is registered."""
        await self._empty.wait()

    def of_user(self, user: str) -> list[Session]:
        """Return the sessions of ``user``."""
        return [self._by_id[client_id] for client_id in self._by_user.get(user, ())]

    def __iter__(self) -> Iterator[Session]:
        return iter(list(self._by_id.values()))

    def __len__(self) -> int:
        return len(self._by_id)
