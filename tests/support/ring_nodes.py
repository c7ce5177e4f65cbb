"""Two real ``tidings serve`` nodes, ``a`` and ``b``, of one static ring (``ring_nodes``):
each serves only the channels its ``placement`` gives it, and sends clients of the
others to the other node (docs/protocol.md §9). Each has a memory broker of its own, as
a ring's owner keeps its channels' history: publish on the owner's server API.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Final

from tests.support.server import ServerProcess, free_port, start_server
from tidings.client import ApiClient
from tidings.core.ring import HashRing, ModuloHash, Ownership

NODES: Final = ("a", "b")


@dataclass
class RingPair:
    """Two nodes of one ring, ``a`` and ``b``."""

    servers: dict[str, ServerProcess]
    ownership: dict[str, Ownership]  # what each node believes
    api_key: str

    def url(self, node: str) -> str:
        return self.servers[node].http_url

    def kill(self) -> None:
        """Kill both nodes."""
        for server in self.servers.values():
            server.kill()

    def api(self, node: str) -> ApiClient:
        return ApiClient(self.url(node), self.api_key)

    def channel(self, prefix: str, **owners: str) -> str:
        """The first ``<prefix><n>`` that each node's ownership gives to the node named."""
        n = 0
        while True:
            channel = f"{prefix}{n}"
            if all(self.ownership[node].owner(channel) == owner for node, owner in owners.items()):
                return channel
            n += 1


def start_pair(
    directory: Path,
    placements: dict[str, str],
    api_key: str,
    *,
    cluster_secret: str | None = None,
    room_options: str = "",
    node_config: dict[str, str] | None = None,
) -> RingPair:
    """Start nodes ``a`` and ``b``, each with its own ``placement`` (``ring`` or
    ``modulo``) over the same two nodes; with ``cluster_secret``, each forwards server
    API calls about the other's channels to it. ``room_options``: more lines of the
    ``room`` namespace's table; ``node_config``: more tables of one node's file."""
    ports = {node: free_port() for node in NODES}
    nodes_table = "\n".join(f'{node} = "http://127.0.0.1:{port}"' for node, port in ports.items())
    servers: dict[str, ServerProcess] = {}
    try:
        for node in NODES:
            config = directory / f"{node}.toml"
            config.write_text(
                f'shutdown_timeout = "1s"\nplacement = "{placements[node]}"\n'
                f"[ring_nodes]\n{nodes_table}\n[namespaces.room]\nhistory_size = 100\n"
                f"{room_options}\n{(node_config or {}).get(node, '')}\n"
            )
            env = {"TIDINGS_API_KEY": api_key, "TIDINGS_NODE_ID": node}
            if cluster_secret is not None:
                env["TIDINGS_CLUSTER_SECRET"] = cluster_secret
            servers[node] = start_server(port=ports[node], config=config, env=env)
    except BaseException:
        for server in servers.values():
            server.kill()
        raise
    ownership: dict[str, Ownership] = {
        node: HashRing(NODES) if placements[node] == "ring" else ModuloHash(NODES) for node in NODES
    }
    return RingPair(servers, ownership, api_key)
