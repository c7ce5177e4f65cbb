"""Node commands (``NodeControl``) as the brokers carry them between nodes: a frame per
command, the same for every backend, and its dispatch to this node's handler. Each
broker does the I/O on a topic every node listens to: Redis a pub/sub topic
(``control_topic``) on the link it already keeps, PostgreSQL a NOTIFY channel, NATS a
core subject.

The Redis topic is ``<prefix>:<db>:control``: it names the database as channel topics
do (pub/sub is not per-database in Redis) and, without the braces of a channel's topic,
never collides with one. A command is a JSON frame naming the node that sent it::

    {"command": "disconnect", "node": "n1", "user": "alice", "code": 4003, "reason": ".."}

The sender handles its own command directly, before publishing it, and ignores the
frame when the backend hands it back: so the sender's part happens even when the
backend is down, and never twice. Delivery to the others is the backend's (Redis
pub/sub, NOTIFY, core NATS): at most once, to the nodes listening at the time; nothing
is stored for a node that is reconnecting.
"""

from __future__ import annotations

import logging

import msgspec

from tidings.brokers.base import DisconnectUser, NodeCommand, NodeCommandHandler

logger = logging.getLogger(__name__)


def control_topic(prefix: str, db: int) -> str:
    """Return the node-command topic of the deployment on ``prefix`` and database ``db``."""
    return f"{prefix}:{db}:control"


class _Disconnect(msgspec.Struct, frozen=True, tag_field="command", tag="disconnect"):
    node: str
    user: str
    code: int
    reason: str


_encode = msgspec.json.Encoder().encode
_decode = msgspec.json.Decoder(_Disconnect).decode


class NodeCommands:
    """This node's side of node commands; see the module docstring."""

    __slots__ = ("_on_command", "node")

    def __init__(self, node: str) -> None:
        self.node = node
        self._on_command: NodeCommandHandler | None = None

    def listen(self, on_command: NodeCommandHandler) -> None:
        """Hand each command, this node's and others', to ``on_command`` from now on."""
        self._on_command = on_command

    def encode(self, command: NodeCommand) -> bytes:
        """Return the frame that carries ``command`` from this node."""
        return _encode(_Disconnect(self.node, command.user, command.code, command.reason))

    def handle(self, command: NodeCommand) -> None:
        """Hand ``command`` to the handler, which must not fail the caller."""
        handler = self._on_command
        if handler is None:
            return
        try:
            handler(command)
        except Exception:  # a faulty handler must not stop the link nor fail the sender
            logger.exception("node command handler failed on %r", command)

    def receive(self, payload: bytes) -> None:
        """Handle a frame received on the control topic, unless this node sent it."""
        try:
            frame = _decode(payload)
        except (msgspec.ValidationError, msgspec.DecodeError):
            # A newer node's command this one does not know, or garbage: not fatal.
            logger.warning("ignored an unreadable node command: %r", payload[:200])
            return
        if frame.node == self.node:
            return  # handled when it was sent
        self.handle(DisconnectUser(frame.user, frame.code, frame.reason))
