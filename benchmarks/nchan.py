"""Nchan, the pub/sub module of nginx, as a server under test: installed, configured, started.

I/O: installs Debian's ``nginx`` and ``libnginx-mod-nchan`` with apt-get when they are
missing (``debian.ensure``), writes an ``nginx.conf`` into a directory of its own and
runs ``nginx`` from it in the foreground. Nothing of the machine's own nginx
configuration is read (``/etc/nginx`` is not used) and no system service is started.

The configuration matches what the comparison asks of every server: one worker process
pinned to the server's CPU (nginx's own ``worker_cpu_affinity``; the master is pinned
by ``start_server`` before it forks), no access log, a memory store keeping the last
``HISTORY_SIZE`` publications of the channel (tidings' default history), and one
location per subscriber kind, all on the one channel ``loadgen.CHANNEL``:

- ``POST /pub``: publish (``nchan_publisher``); ``GET /pub`` answers the channel's
  info, ``active subscribers: n`` among it;
- ``/ws``: WebSocket; ``/sse``: EventSource; both start at the next publication;
- ``/lp``: long poll, resumed with ``If-Modified-Since``/``If-None-Match`` taken from
  the previous answer's ``Last-Modified``/``Etag``; waits at most ``LONG_POLL_WAIT_S``;
- ``/poll``: interval poll: answers ``304 Not Modified`` at once when there is nothing
  after the position the two headers give.

The master process only supervises; the worker does all the serving, so CPU time and
memory are read from the worker (``ServerProcess.worker_pid``).
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Final

import httpx
from benchmarks import debian, loadgen
from benchmarks.server_process import ServerProcess, child_pids, start_server

NGINX: Final = Path("/usr/sbin/nginx")
MODULE: Final = Path("/usr/lib/nginx/modules/ngx_nchan_module.so")
PACKAGES: Final = {"nginx": NGINX, "libnginx-mod-nchan": MODULE}
HISTORY_SIZE: Final = 100
LONG_POLL_WAIT_S: Final = 25
MAX_CONNECTIONS: Final = 20_000
WORKER_TIMEOUT_S: Final = 10.0
_SUBSCRIBERS: Final = re.compile(r"active subscribers: (\d+)")

_CONFIG: Final = """\
# Written by benchmarks/nchan.py for one benchmark run; not the machine's nginx.
load_module {module};
daemon off;
master_process on;
worker_processes 1;
worker_cpu_affinity {affinity};
worker_rlimit_nofile {max_connections};
pid {prefix}/nginx.pid;
error_log stderr warn;

events {{
    worker_connections {max_connections};
    use epoll;
}}

http {{
    access_log off;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    # Keep-alive connections stay open like uvicorn's (nginx closes one after 1,000
    # requests by default, which would make the pollers reconnect).
    keepalive_requests 100000000;
    keepalive_timeout 75s;
    nchan_shared_memory_size 256m;

    server {{
        listen 127.0.0.1:{port} backlog=4096;
        nchan_channel_id {channel};
        nchan_message_buffer_length {history};
        nchan_message_timeout 1h;

        location = /health {{ return 200 "ok\\n"; }}
        location = /pub {{ nchan_publisher http; }}
        location = /ws {{
            nchan_subscriber websocket;
            nchan_subscriber_first_message newest;
        }}
        location = /sse {{
            nchan_subscriber eventsource;
            nchan_subscriber_first_message newest;
        }}
        location = /lp {{
            nchan_subscriber longpoll;
            nchan_subscriber_first_message newest;
            nchan_subscriber_timeout {wait}s;
        }}
        location = /poll {{ nchan_subscriber interval-poll; }}
    }}
}}
"""


def ensure_installed() -> list[str]:
    """Install nginx and the Nchan module when missing; the packages installed."""
    return debian.ensure(PACKAGES)


def versions() -> str:
    """The installed nginx and Nchan, as Debian names their packages."""
    return (
        f"nginx {debian.installed_version('nginx')}, "
        f"libnginx-mod-nchan {debian.installed_version('libnginx-mod-nchan')}"
    )


def config(port: int, prefix: Path, cpu: int) -> str:
    """The text of ``nginx.conf`` for a server on ``127.0.0.1:port`` pinned to ``cpu``."""
    return _CONFIG.format(
        module=MODULE,
        affinity=format(1 << cpu, "b"),  # a bit mask, CPU 0 rightmost
        max_connections=MAX_CONNECTIONS,
        prefix=prefix,
        port=port,
        channel=loadgen.CHANNEL,
        history=HISTORY_SIZE,
        wait=LONG_POLL_WAIT_S,
    )


def start(port: int, log_dir: Path, cpu: int, name: str = "nchan") -> ServerProcess:
    """Start nginx with Nchan on ``port`` and wait for its worker process.

    Args:
        port: the port of 127.0.0.1 to listen on.
        log_dir: a directory for this run; the configuration goes into a subdirectory.
        cpu: the CPU the master and its worker run on.
        name: the server's name in the figures.

    Returns:
        The running server, its ``worker_pid`` set.

    Raises:
        RuntimeError: nginx exited, or started no worker within ``WORKER_TIMEOUT_S``.
    """
    prefix = log_dir / f"nchan-{port}"
    prefix.mkdir()
    conf = prefix / "nginx.conf"
    conf.write_text(config(port, prefix, cpu))
    argv = [str(NGINX), "-p", str(prefix), "-c", str(conf), "-e", "stderr"]
    server = start_server(name, argv, port, log_dir / f"{name}-{port}.log", cpu)
    deadline_s = time.monotonic() + WORKER_TIMEOUT_S
    while time.monotonic() < deadline_s:
        if server.process.poll() is not None:
            raise RuntimeError(f"nginx exited:\n{server.log_tail()}")
        workers = child_pids(server.process.pid)
        if workers:
            server.worker_pid = workers[0]
            return server
        time.sleep(0.02)
    server.stop()
    raise RuntimeError(f"nginx started no worker in {WORKER_TIMEOUT_S:g} s:\n{server.log_tail()}")


def subscribers_of(answer: httpx.Response) -> int:
    """The channel's subscribers from ``GET /pub`` (404 while the channel does not exist)."""
    found = _SUBSCRIBERS.search(answer.text)
    return int(found[1]) if answer.status_code == 200 and found else 0
