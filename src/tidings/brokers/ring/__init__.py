"""The consistent-hashing mode's cluster side (docs/modes/hashing.md): membership of the
ring in etcd (``membership``), the ring record there (``record``) and the end of its
transitions (``transition``), over etcd's JSON gateway (``etcd``)."""
