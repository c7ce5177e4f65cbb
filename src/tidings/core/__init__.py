"""The pure core of tidings: channels, publications, positions, cursors, history and recovery.

Nothing here does I/O, reads a clock or draws randomness: time, ids and randomness arrive as
arguments, so every rule is testable without sockets or an event loop.
"""
