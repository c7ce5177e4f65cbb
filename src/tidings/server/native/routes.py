"""The requests the native server serves itself, without Starlette: the application's table.

The native server knows no path by name. The application (``TidingsApp.native_routes``)
says which requests, by method and path, go past the ASGI app, and to what: a *door*
answers, parks or hands back a request at once with no task (a poll); a *batched*
handler takes whole requests, and a pipelined run of them is served by one task and
answered in one write (a publisher). Every other request runs the ASGI app, which
serves these too (on uvicorn, and when a door hands one back).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from tidings.server.api import NativePublish
from tidings.transports.poll import NativePoll

# A request's method and its path without the query, as the parser gives them.
RouteKey = tuple[str, bytes]
Door = Callable[[NativePoll], None]


@dataclass(frozen=True, slots=True)
class NativeRoutes:
    """Doors and batched handlers by ``(method, path)``; see the module docstring."""

    doors: Mapping[RouteKey, Door] = field(default_factory=dict)
    batched: Mapping[RouteKey, NativePublish] = field(default_factory=dict)

    def door_for(self, method: str, path: bytes) -> Door | None:
        """The door of a request, if it has one."""
        return self.doors.get((method, path))

    def batched_for(self, method: str, path: bytes) -> NativePublish | None:
        """The batched handler of a request, if it has one."""
        return self.batched.get((method, path))
