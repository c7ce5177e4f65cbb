"""Sources: publications fed into a node from outside (an application's table, a Kafka
topic), through the hub's publish path, so that offsets, history and idempotency stay
the broker's (DESIGN.md, "sources"). ``base`` holds the protocols every kind implements,
``registry`` the kinds, ``runner`` how a node runs them; each kind is one module.
"""
