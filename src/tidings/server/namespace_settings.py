"""The ``[namespaces.<name>]`` settings, and building a node's namespaces from them.

Pure. The tables of every source are merged first (config.py), then built here in one
go: the default namespace first, every other one starting from it (or, for a built-in
namespace such as ``user``, from its built-in options), so a namespace's options never
depend on the order the file or the environment gave them in.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Final

from tidings.core.channel import DEFAULT_NAMESPACE, NamespaceName
from tidings.core.history import HistoryOptions
from tidings.core.namespace import NamespaceOptions, Policy, default_namespaces
from tidings.errors import ConfigError
from tidings.server.settings_parsers import parse_bool, parse_int
from tidings.server.units import parse_duration_s, parse_size_bytes

# The table of the default namespace (whose channel names have no ``name:`` prefix).
DEFAULT_NAMESPACE_KEY: Final = "default"

# Each namespace's table, merged across the sources: the keys a later source sets win.
NamespaceTables = dict[str, dict[str, object]]

_NAMESPACE_KEYS: Final = (
    "policy",
    "client_publish",
    "presence",
    "history_size",
    "history_ttl",
    "max_data_size",
)


def _namespace_options(
    name: str, table: Mapping[str, object], base: NamespaceOptions
) -> NamespaceOptions:
    unknown = sorted(set(table) - set(_NAMESPACE_KEYS))
    if unknown:
        raise ConfigError(
            f"namespace {name!r} has unknown settings {unknown}; known: {list(_NAMESPACE_KEYS)}"
        )
    options = base
    where = f"namespaces.{name}"
    if "policy" in table:
        value = table["policy"]
        try:
            options = replace(options, policy=Policy(value))
        except ValueError:
            raise ConfigError(
                f"{where}.policy is {value!r}; expected one of {[p.value for p in Policy]}"
            ) from None
    if "client_publish" in table:
        options = replace(
            options, client_publish=parse_bool(f"{where}.client_publish", table["client_publish"])
        )
    if "presence" in table:
        options = replace(options, presence=parse_bool(f"{where}.presence", table["presence"]))
    if "max_data_size" in table:
        size = parse_size_bytes(f"{where}.max_data_size", table["max_data_size"])
        options = replace(options, max_data_bytes=size)
    history = options.history
    if "history_size" in table:
        history = HistoryOptions(
            parse_int(f"{where}.history_size", table["history_size"]), history.ttl_ms
        )
    if "history_ttl" in table:
        ttl_s = parse_duration_s(f"{where}.history_ttl", table["history_ttl"])
        if ttl_s <= 0:
            raise ConfigError(f"{where}.history_ttl must be more than 0")
        history = HistoryOptions(history.size, int(ttl_s * 1000))
    return replace(options, history=history)


def build_namespaces(tables: NamespaceTables) -> dict[NamespaceName, NamespaceOptions]:
    """Build every namespace from the merged tables of all sources.

    The default namespace first: every other namespace starts from it (or, for a
    built-in one such as ``user``, from its built-in options), whatever order the
    tables or environment variables came in.
    """
    namespaces = default_namespaces()
    default_table = tables.get(DEFAULT_NAMESPACE_KEY)
    if default_table is not None:
        namespaces[DEFAULT_NAMESPACE] = _namespace_options(
            DEFAULT_NAMESPACE_KEY, default_table, namespaces[DEFAULT_NAMESPACE]
        )
    for ns_name, table in tables.items():
        if ns_name == DEFAULT_NAMESPACE_KEY:
            continue
        key = NamespaceName(ns_name)
        base = namespaces.get(key, namespaces[DEFAULT_NAMESPACE])
        namespaces[key] = _namespace_options(ns_name, table, base)
    return namespaces
