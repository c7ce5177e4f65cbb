"""Resident memory of a process, read from ``/proc``: how the abuse tests bound a node's
memory (a figure of the kernel's, not a timing)."""

from __future__ import annotations

from pathlib import Path

KIB = 1024
MIB = 1024 * KIB


def rss_bytes(pid: int) -> int:
    """Return the resident set size of process ``pid`` in bytes (``VmRSS``)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * KIB
    raise LookupError(f"process {pid} reports no VmRSS (a kernel thread, or it has exited)")
