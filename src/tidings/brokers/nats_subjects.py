"""Names the NATS broker gives things on the NATS server: channel tokens, subjects, the
stream and the presence bucket. Pure.

A channel name may hold characters that NATS subjects forbid or read as syntax (``.``
separates tokens, ``*`` and ``>`` are wildcards, white space ends a subject), and KV
keys allow even fewer (``[-/_=.A-Za-z0-9]``). So a channel becomes one *token* that
is valid in both: ASCII letters, digits, ``_`` and ``-`` stay as they are (names stay
readable in ``nats`` tools: ``room:45`` is ``room=3A45``); every other byte of its
UTF-8 form is ``=`` and two upper-case hex digits. The encoding is reversible, and two
names never share a token.

Subjects of a deployment, all under its ``prefix`` (default ``tidings``):

* ``<prefix>.h.<token>``: where a channel's publications are published and stored,
  the subjects of the history stream (``<prefix>-history``);
* ``<prefix>.l.<token>``: the live subject; the stream *republishes* there each
  publication it stored (never one it refused), and presence frames travel there too;
* ``<prefix>.control``: node commands.
"""

from __future__ import annotations

import re
from typing import Final

from tidings.core.channel import ChannelName

DEFAULT_PREFIX: Final = "tidings"
_KEPT: Final = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
_ESCAPE: Final = "="
_PREFIX_PATTERN: Final = re.compile(r"[A-Za-z0-9_-]{1,64}")


def is_valid_prefix(prefix: str) -> bool:
    """Whether ``prefix`` can start subjects and name a stream and a bucket."""
    return _PREFIX_PATTERN.fullmatch(prefix) is not None


def token_of(name: str) -> str:
    """Return ``name`` as one token valid in a NATS subject and a KV key."""
    parts: list[str] = []
    for byte in name.encode():
        parts.append(chr(byte) if byte in _KEPT else f"{_ESCAPE}{byte:02X}")
    return "".join(parts)


def name_of(token: str) -> str:
    """Return the name ``token_of`` made ``token`` from.

    Raises:
        ValueError: ``token`` is not one ``token_of`` makes.
    """
    raw = bytearray()
    index = 0
    while index < len(token):
        char = token[index]
        if char == _ESCAPE:
            digits = token[index + 1 : index + 3]
            if len(digits) != 2 or any(d not in "0123456789ABCDEF" for d in digits):
                raise ValueError(f"bad escape in token {token!r}")
            raw.append(int(digits, 16))
            index += 3
        elif ord(char) < 128 and ord(char) in _KEPT:
            raw.append(ord(char))
            index += 1
        else:
            raise ValueError(f"{char!r} cannot appear in a token")
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise ValueError(f"token {token!r} is not UTF-8 once unescaped") from None


def history_subject(prefix: str, channel: ChannelName) -> str:
    """Return the subject ``channel``'s publications are stored under."""
    return f"{prefix}.h.{token_of(channel)}"


def live_subject(prefix: str, channel: ChannelName) -> str:
    """Return the subject ``channel``'s stored publications are republished on."""
    return f"{prefix}.l.{token_of(channel)}"


def channel_of_live_subject(prefix: str, subject: str) -> ChannelName | None:
    """Return the channel whose live subject is ``subject``, or ``None``."""
    start = f"{prefix}.l."
    if not subject.startswith(start):
        return None
    try:
        return ChannelName(name_of(subject[len(start) :]))
    except ValueError:
        return None


def control_subject(prefix: str) -> str:
    """Return the subject node commands travel on."""
    return f"{prefix}.control"


def stream_name(prefix: str) -> str:
    """Return the name of the history stream."""
    return f"{prefix}-history"


def presence_bucket(prefix: str) -> str:
    """Return the name of the presence KV bucket."""
    return f"{prefix}-presence"


def presence_key(channel: ChannelName, node: str) -> str:
    """Return the KV key holding ``node``'s clients in ``channel``."""
    return f"{token_of(channel)}.{token_of(node)}"
