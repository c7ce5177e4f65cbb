"""What an embedding application gives for its per-key state (docs/modes/hashing.md,
"Per-key state"): its ``KeyHandler`` and how it is called, ``KeyHooks``
(``TidingsApp(key_hooks=...)``). ``server.key_ownership`` makes the calls.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Final, Protocol

DEFAULT_KEY_IDLE_S: Final = 300.0
DEFAULT_CONCURRENCY: Final = 64
DEFAULT_CALL_TIMEOUT_S: Final = 30.0


class KeyHandler(Protocol):
    """An application's per-key state: loaded when this node gains a routing key, saved
    when it loses it. Both are awaited, each cancelled if it has not returned within
    ``KeyHooks.call_timeout_s``; each call is about one key, and for one key ``gained``
    and ``lost`` alternate, starting with ``gained``."""

    async def gained(self, key: str) -> None:
        """This node is about to serve ``key`` as its owner: load its state."""
        ...

    async def lost(self, key: str) -> None:
        """This node no longer serves ``key`` (another node owns it, this node is
        leaving, or the key was idle): save its state and drop it."""
        ...


@dataclass(frozen=True, slots=True)
class KeyHooks:
    """A ``KeyHandler`` and how it is called (``TidingsApp(key_hooks=...)``).

    Attributes:
        handler: told of each key gained and lost.
        idle_s: a key with no subscriber on this node, untouched by any request for
            this long, is lost (so the keys held stay as many as the keys in use).
        namespaces: the namespaces whose channels' keys the handler is told of; ``None``:
            every namespace but tidings' own (``tidings``).
        concurrency: at most this many of the handler's calls run at once (a node
            leaving with many keys saves them without flooding the application's
            database).
        call_timeout_s: a ``gained`` or ``lost`` that has not returned this long
            after it started is cancelled and counts as failed: the key is not gained
            (the next request tries again), or it is released without its state saved
            being confirmed.
    """

    handler: KeyHandler
    idle_s: float = DEFAULT_KEY_IDLE_S
    namespaces: Collection[str] | None = None
    concurrency: int = DEFAULT_CONCURRENCY
    call_timeout_s: float = DEFAULT_CALL_TIMEOUT_S

    def __post_init__(self) -> None:
        if isinstance(self.namespaces, str):
            raise ValueError(
                f"namespaces must be a list of names, got the string {self.namespaces!r}"
            )
        if not self.idle_s > 0:
            raise ValueError(f"idle_s must be positive, got {self.idle_s}")
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {self.concurrency}")
        if not self.call_timeout_s > 0:  # NaN too
            raise ValueError(f"call_timeout_s must be positive, got {self.call_timeout_s}")
