"""The consistent-hashing mode's cluster side (docs/modes/hashing.md): membership of the
ring in etcd (``membership``), over etcd's JSON gateway (``etcd``)."""
