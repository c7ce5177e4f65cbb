"""Transports (Hop 1): thin adapters from client connections to hub calls."""
