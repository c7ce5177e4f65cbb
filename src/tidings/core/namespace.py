"""Namespaces and their options (docs/protocol.md §1, DESIGN.md configuration). Pure.

A channel's namespace is the part of its name before the first ``:``; its options say
how long history is kept, who may subscribe, whether clients may publish and whether
presence is on. A channel whose namespace is not configured takes the options of the
default namespace (the one of names without ``:``).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from tidings.core.channel import DEFAULT_NAMESPACE, ChannelName, NamespaceName, namespace_of
from tidings.core.history import HistoryOptions

DEFAULT_HISTORY_SIZE: Final = 100
DEFAULT_HISTORY_TTL_MS: Final = 3_600_000
DEFAULT_MAX_DATA_BYTES: Final = 65_536


class Policy(enum.Enum):
    """Who may subscribe to a namespace's channels (docs/protocol.md §8)."""

    PUBLIC = "public"  # anyone
    USER = "user"  # only <namespace>:<own user id>
    TOKEN = "token"  # only channels the connection token lists


@dataclass(frozen=True, slots=True)
class NamespaceOptions:
    """The options of one namespace."""

    policy: Policy = Policy.PUBLIC
    client_publish: bool = False
    presence: bool = False
    history: HistoryOptions = field(
        default_factory=lambda: HistoryOptions(DEFAULT_HISTORY_SIZE, DEFAULT_HISTORY_TTL_MS)
    )
    max_data_bytes: int = DEFAULT_MAX_DATA_BYTES


def default_namespaces() -> dict[NamespaceName, NamespaceOptions]:
    """The namespaces a server has out of the box: the default one public, ``user`` per-user."""
    return {
        DEFAULT_NAMESPACE: NamespaceOptions(),
        NamespaceName("user"): NamespaceOptions(policy=Policy.USER),
    }


class Namespaces:
    """Looks up the options that apply to a channel."""

    __slots__ = ("_by_name", "_default")

    def __init__(self, by_name: Mapping[NamespaceName, NamespaceOptions] | None = None) -> None:
        merged = default_namespaces()
        merged.update(by_name or {})
        self._by_name = merged
        self._default = merged[DEFAULT_NAMESPACE]

    def options_for(self, channel: ChannelName) -> NamespaceOptions:
        """Return the options of ``channel``'s namespace (the default one if unconfigured)."""
        return self._by_name.get(namespace_of(channel), self._default)

    def items(self) -> list[tuple[NamespaceName, NamespaceOptions]]:
        """Return every configured namespace with its options."""
        return list(self._by_name.items())
