"""Namespaces and their options (core/namespace.py)."""

from __future__ import annotations

from tidings.core.channel import DEFAULT_NAMESPACE, ChannelName, NamespaceName
from tidings.core.history import HistoryOptions
from tidings.core.namespace import (
    DEFAULT_HISTORY_SIZE,
    DEFAULT_HISTORY_TTL_MS,
    DEFAULT_MAX_DATA_BYTES,
    NamespaceOptions,
    Namespaces,
    Policy,
)


def test_namespace_options_default_to_public_without_client_publish_or_presence() -> None:
    options = NamespaceOptions()
    assert options.policy is Policy.PUBLIC
    assert options.client_publish is False
    assert options.presence is False
    assert options.history == HistoryOptions(DEFAULT_HISTORY_SIZE, DEFAULT_HISTORY_TTL_MS)
    assert options.max_data_bytes == DEFAULT_MAX_DATA_BYTES == 65_536


def test_namespaces_out_of_the_box_are_a_public_default_and_a_per_user_user() -> None:
    namespaces = Namespaces()
    assert namespaces.options_for(ChannelName("lobby")).policy is Policy.PUBLIC
    assert namespaces.options_for(ChannelName("user:123")).policy is Policy.USER
    assert dict(namespaces.items()) == {
        DEFAULT_NAMESPACE: NamespaceOptions(),
        NamespaceName("user"): NamespaceOptions(policy=Policy.USER),
    }


def test_namespaces_look_up_a_configured_namespace_by_the_part_before_the_colon() -> None:
    chat = NamespaceOptions(client_publish=True, presence=True)
    namespaces = Namespaces({NamespaceName("chat"): chat})
    assert namespaces.options_for(ChannelName("chat:general")) is chat
    assert namespaces.options_for(ChannelName("chat:a:b")) is chat


def test_namespaces_give_an_unconfigured_namespace_the_default_options() -> None:
    default = NamespaceOptions(policy=Policy.TOKEN)
    namespaces = Namespaces({DEFAULT_NAMESPACE: default})
    assert namespaces.options_for(ChannelName("unknown:1")) is default
    assert namespaces.options_for(ChannelName("plain")) is default
    # a name without a colon is in the default namespace, even one spelled "user"
    assert namespaces.options_for(ChannelName("user")) is default


def test_namespaces_configuration_overrides_the_built_in_user_namespace() -> None:
    user = NamespaceOptions(policy=Policy.USER, client_publish=True)
    namespaces = Namespaces({NamespaceName("user"): user})
    assert namespaces.options_for(ChannelName("user:42")) is user
