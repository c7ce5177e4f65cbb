"""A deterministic simulation of the ring's hand-over protocol (docs/modes/hashing.md,
"Scaling without loss").

Nodes, etcd and the network are one seeded, single-threaded world of scheduled events
(``world``): publications, subscriptions, planned joins and leaves, crashes, node-to-node
messages delayed, reordered and sometimes duplicated. The nodes (``nodes``) take every
decision of the protocol through ``tidings.core.handover`` and ``tidings.core.catchup``,
the functions the server runs; the checker (``checker``) watches the invariants. A seed
replays exactly: ``TIDINGS_SIM_SEED=<seed> pytest tests/simulation -k replay``.
"""
