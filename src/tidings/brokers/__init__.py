"""Brokers: how a node learns of publications (DESIGN.md, Hop 2). One module per backend."""
