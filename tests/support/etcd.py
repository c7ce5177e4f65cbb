"""An etcd server of the test's own (Debian's ``etcd-server``), on free loopback ports in
a temporary directory; stopped by its pid. Missing ``etcd``: skipped locally, failed
under ``CI=true`` (services.py)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final

import httpx

from tests.support.server import free_port
from tests.support.services import require_binary

START_TIMEOUT_S: Final = 20.0


@contextmanager
def etcd_server(directory: Path) -> Iterator[str]:
    """Run an etcd with its data in ``directory``; yield its client URL."""
    etcd = require_binary("etcd")
    client, peer = free_port(), free_port()
    client_url, peer_url = f"http://127.0.0.1:{client}", f"http://127.0.0.1:{peer}"
    log = (directory / "etcd.log").open("w")
    process = subprocess.Popen(
        [
            etcd,
            "--name=test",
            f"--data-dir={directory / 'data'}",
            f"--listen-client-urls={client_url}",
            f"--advertise-client-urls={client_url}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=test={peer_url}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _is_healthy(client_url):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"etcd did not start: see {directory / 'etcd.log'}")
            time.sleep(0.05)
        yield client_url
    finally:
        process.kill()
        process.wait()
        log.close()


def _is_healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=1.0).status_code == 200
    except httpx.HTTPError:
        return False
