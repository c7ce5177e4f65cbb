"""Relays (docs/brokers/relay.md): real ``tidings serve`` processes, an origin and relays
of it, some behind the tests' TCP proxy as a region's link (20 ms each way), real
WebSocket clients next to the relays.

What is checked: publications pass with the origin's positions; a publish at a relay
is made at the origin, once per key; history at a relay answers what the origin holds;
a region's link cut and restored loses and repeats nothing (over WebSocket and over
SSE); a client hears ``recovered: false`` only when the origin had lost what it
missed; relays chain; a client moves between relays and the origin with its
position; a relay is not ready while its upstream is down.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from collections.abc import Iterator
from contextlib import AsyncExitStack, ExitStack, contextmanager
from pathlib import Path
from typing import Final

import httpx
import jwt
import pytest

from tests.support.server import ServerProcess, free_port, start_server
from tests.support.tcp_proxy import TcpProxy
from tests.support.ws import Frame, WsClient, ws_client
from tidings.brokers.factory import check_broker
from tidings.brokers.relay import RelayTarget
from tidings.errors import ConfigError

API_KEY: Final = "relay-test-api-key"
JWT_SECRET: Final = "relay-test-jwt-secret-long-enough-for-hs256"
REGION_DELAY_S: Final = 0.02
SMALL_HISTORY: Final = 5
WAIT_S: Final = 20.0
NAMESPACES: Final = f"""
[namespaces.room]
client_publish = true
history_size = 1000

[namespaces.small]
history_size = {SMALL_HISTORY}

[namespaces.private]
policy = "token"
"""
RELAY_TABLE: Final = f"""
[brokers.relay]
api_key = "{API_KEY}"
"""


def make_token(sub: str, *, channels: list[str], expires_in_s: float = 3600.0) -> str:
    """An HS256 connection token of ``sub`` for ``channels`` (docs/protocol.md §8)."""
    claims = {"sub": sub, "channels": channels, "exp": int(time.time() + expires_in_s)}
    return jwt.encode(claims, JWT_SECRET, algorithm="HS256")


def unique_channel(namespace: str = "room") -> str:
    return f"{namespace}:{secrets.token_hex(6)}"


@contextmanager
def node(
    directory: Path,
    upstream: str | None = None,
    port: int | None = None,
    *,
    wait: bool = True,
    relay_table: str = RELAY_TABLE,
    env: dict[str, str] | None = None,
) -> Iterator[ServerProcess]:
    """Run an origin (``upstream`` None) or a relay of ``upstream`` (a relay broker URL,
    with ``relay_table`` as its ``[brokers.relay]``); a relay is returned once ready (its
    link to the upstream is up), unless ``wait`` is false."""
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / f"tidings-{secrets.token_hex(4)}.toml"
    config.write_text(NAMESPACES if upstream is None else NAMESPACES + relay_table)
    extra = [] if upstream is None else ["--broker", upstream]
    environment = {"TIDINGS_API_KEY": API_KEY, **(env or {})}
    server = start_server(config=config, port=port, env=environment, extra=extra)
    try:
        if upstream is not None and wait:
            wait_until_ready(server)
        yield server
    finally:
        server.kill()


def wait_until_ready(server: ServerProcess) -> None:
    """Poll ``/ready`` (an observable condition) until it answers 200."""
    deadline = time.monotonic() + WAIT_S
    while httpx.get(f"{server.http_url}/ready").status_code != 200:
        if time.monotonic() > deadline:
            pytest.fail(f"{server.http_url} did not become ready:\n" + "\n".join(server.log))
        time.sleep(0.05)


def via(server: ServerProcess, scheme: str = "relay+ws") -> str:
    return f"{scheme}://127.0.0.1:{server.port}"


@contextmanager
def region_link(server: ServerProcess) -> Iterator[TcpProxy]:
    """A region's link to ``server``: the tests' proxy, 20 ms each way."""
    with TcpProxy("127.0.0.1", server.port) as proxy:
        proxy.set_delay(REGION_DELAY_S)
        yield proxy


async def publish(
    http: httpx.AsyncClient, server: ServerProcess, channel: str, n: int, key: str | None = None
) -> Frame:
    body: dict[str, object] = {"channel": channel, "data": {"n": n}}
    if key is not None:
        body["key"] = key
    response = await http.post(
        f"{server.http_url}/api/publish", json=body, headers={"Authorization": f"Bearer {API_KEY}"}
    )
    assert response.status_code == 200, response.text
    result: Frame = response.json()
    return result


async def publish_many(
    http: httpx.AsyncClient, server: ServerProcess, channel: str, count: int
) -> list[Frame]:
    return [await publish(http, server, channel, n) for n in range(count)]


async def wait_for_ready(http: httpx.AsyncClient, server: ServerProcess, status: int) -> None:
    """Poll ``/ready`` (an observable condition) until it answers ``status``."""
    try:
        async with asyncio.timeout(WAIT_S):
            while (await http.get(f"{server.http_url}/ready")).status_code != status:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
    except TimeoutError:
        pytest.fail(f"/ready of {server.http_url} did not answer {status} in time")


def positions(frames: list[Frame]) -> list[tuple[str, int]]:
    return [(frame["epoch"], frame["offset"]) for frame in frames]


async def subscribed(
    stack: AsyncExitStack, server: ServerProcess, channel: str, **since: object
) -> tuple[WsClient, Frame]:
    client = await stack.enter_async_context(ws_client(server.ws_url))
    result = await client.result("subscribe", channel=channel, **since)
    return client, result


# -- settings (no I/O) ----------------------------------------------------------------------


def test_a_relay_url_names_the_upstreams_link_and_api() -> None:
    ws = RelayTarget.parse("relay+ws://origin:8000/rt/", {"token": "t", "api_key": "k"})
    sse = RelayTarget.parse("relay+https://origin:8443")

    assert (ws.link_url, ws.base_url, ws.websocket, ws.token, ws.api_key) == (
        "ws://origin:8000/rt/ws",
        "http://origin:8000/rt",
        True,
        "t",
        "k",
    )
    assert (sse.link_url, sse.base_url, sse.websocket, sse.token) == (
        "https://origin:8443",
        "https://origin:8443",
        False,
        None,
    )


@pytest.mark.parametrize(
    ("url", "table", "refusal"),
    [
        ("relay+ws://origin:8000?token=t", {}, "takes no query"),
        ("relay+ws://user:secret@origin:8000", {}, "no credentials"),
        ("relay+ws://", {}, "must be relay+ws://host:port"),
        ("relay+ws://origin:8000", {"tokn": "t"}, "unknown setting 'tokn'"),
        ("relay+ws://origin:8000", {"token": 7}, "brokers.relay.token must be"),
        ("relay+ws://origin:8000", {"token": "t", "token_file": "f"}, "token or token_file"),
    ],
)
def test_a_bad_relay_setting_is_refused_in_one_line(
    url: str, table: dict[str, object], refusal: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(refusal)):
        check_broker(url, None, {"relay": table})


def test_a_token_file_is_read_again_for_each_connection(tmp_path: Path) -> None:
    path = tmp_path / "relay.jwt"
    target = RelayTarget.parse("relay+ws://origin:8000", {"token_file": str(path)})
    path.write_text("first\n")
    first = target.current_token()
    path.write_text("renewed\n")

    assert (first, target.current_token()) == ("first", "renewed")


# -- one origin, one relay ------------------------------------------------------------------


async def test_a_relay_passes_publications_on_with_the_origins_positions(tmp_path: Path) -> None:
    channel = unique_channel()
    with node(tmp_path / "origin") as origin, node(tmp_path / "relay", via(origin)) as relay:
        async with httpx.AsyncClient() as http, AsyncExitStack() as stack:
            clients = [(await subscribed(stack, relay, channel))[0] for _ in range(3)]
            made = await publish_many(http, origin, channel, 5)

            for client in clients:
                assert positions(await client.publications(5)) == positions(made)


async def test_a_publish_at_a_relay_is_made_once_at_the_origin(tmp_path: Path) -> None:
    channel = unique_channel()
    with node(tmp_path / "origin") as origin, node(tmp_path / "relay", via(origin)) as relay:
        async with httpx.AsyncClient() as http, AsyncExitStack() as stack:
            client, _ = await subscribed(stack, relay, channel)
            first = await publish(http, relay, channel, 1, key="once")
            again = await publish(http, relay, channel, 1, key="once")
            by_client = await client.result("publish", channel=channel, data={"n": 2}, key="once")
            received = await client.publications(2)
            # The same (anonymous) user retrying at the origin: its key space is the same.
            at_origin_client = await stack.enter_async_context(ws_client(origin.ws_url))
            retried = await at_origin_client.result(
                "publish", channel=channel, data={"n": 2}, key="once"
            )
            history = await http.get(
                f"{origin.http_url}/api/history",
                params={"channel": channel},
                headers={"Authorization": f"Bearer {API_KEY}"},
            )

    assert again == {**first, "duplicate": True}
    # The client's key is its user's, apart from the server API's: a publication of its own.
    assert by_client["offset"] == first["offset"] + 1
    assert retried == by_client
    assert positions(received) == [(first["epoch"], 1), (first["epoch"], 2)]
    assert positions(history.json()["publications"]) == positions(received)
    assert received[1]["info"]["user"] == ""  # who published, as the origin tells it


async def test_history_at_a_relay_answers_what_the_origin_holds(tmp_path: Path) -> None:
    channel = unique_channel()
    with node(tmp_path / "origin") as origin, node(tmp_path / "relay", via(origin)) as relay:
        async with httpx.AsyncClient() as http, AsyncExitStack() as stack:
            made = await publish_many(http, origin, channel, 10)
            epoch = made[0]["epoch"]
            # Made before the relay followed the channel: only the origin has them.
            _, early = await subscribed(stack, relay, channel, since={"epoch": epoch, "offset": 3})
            made += await publish_many(http, origin, channel, 5)
            late_client, late = await subscribed(
                stack, relay, channel, since={"epoch": epoch, "offset": 11}
            )
            page = await late_client.result("history", channel=channel, limit=4)
            _, ahead = await subscribed(stack, relay, channel, since={"epoch": epoch, "offset": 99})

    assert (early["recovered"], positions(early["publications"])) == (True, positions(made[3:10]))
    assert (late["recovered"], positions(late["publications"])) == (True, positions(made[11:]))
    assert positions(page["publications"]) == positions(made[-4:])
    assert (ahead["recovered"], ahead["offset"]) == (False, 15)


async def test_a_relay_is_not_ready_and_refuses_new_channels_while_its_upstream_is_down(
    tmp_path: Path,
) -> None:
    port = free_port()
    upstream = f"relay+ws://127.0.0.1:{port}"
    with node(tmp_path / "relay", upstream, wait=False) as relay:
        async with httpx.AsyncClient() as http, AsyncExitStack() as stack:
            await wait_for_ready(http, relay, 503)
            client = await stack.enter_async_context(ws_client(relay.ws_url))
            refused = await client.request("subscribe", channel=unique_channel())
            with node(tmp_path / "origin", port=port):
                await wait_for_ready(http, relay, 200)
                accepted = await client.request("subscribe", channel=unique_channel())

    assert refused["error"]["code"] == "unavailable"
    assert "result" in accepted


# -- regions --------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["relay+ws", "relay+http"])
async def test_a_regions_link_cut_and_restored_loses_and_repeats_nothing(
    tmp_path: Path, scheme: str
) -> None:
    channel = unique_channel()
    with ExitStack() as nodes:
        origin = nodes.enter_context(node(tmp_path / "origin"))
        link = nodes.enter_context(region_link(origin))
        relay = nodes.enter_context(node(tmp_path / "relay", f"{scheme}://127.0.0.1:{link.port}"))
        async with httpx.AsyncClient() as http, AsyncExitStack() as stack:
            clients = [(await subscribed(stack, relay, channel))[0] for _ in range(2)]
            made = await publish_many(http, origin, channel, 5)
            for client in clients:
                await client.publications(5)
            link.stall()
            link.cut()
            await wait_for_ready(http, relay, 503)
            made += await publish_many(http, origin, channel, 10)
            link.resume()
            await wait_for_ready(http, relay, 200)
            made += await publish_many(http, origin, channel, 3)
            after = [await client.publications(13) for client in clients]
            # Nothing more is on its way: a publication after them comes next, alone.
            last = await publish(http, origin, channel, 99)
            following = [await client.publications(1) for client in clients]

    for received, next_one in zip(after, following, strict=True):
        assert positions(received) == positions(made[5:])
        assert positions(next_one) == positions([last])


async def publish_past_history_while_cut(
    http: httpx.AsyncClient,
    link: TcpProxy,
    origin: ServerProcess,
    relay: ServerProcess,
    channel: str,
) -> list[Frame]:
    """Cut the relay's link, publish at the origin more than its history keeps (what the
    relay missed is evicted), give the link back; return what was published."""
    link.stall()
    link.cut()
    await wait_for_ready(http, relay, 503)
    made = await publish_many(http, origin, channel, 2 * SMALL_HISTORY)
    link.resume()
    return made


async def test_a_client_hears_recovered_false_only_when_the_origin_lost_what_it_missed(
    tmp_path: Path,
) -> None:
    channel = unique_channel("small")
    with ExitStack() as nodes:
        origin = nodes.enter_context(node(tmp_path / "origin"))
        link = nodes.enter_context(region_link(origin))
        relay = nodes.enter_context(node(tmp_path / "relay", f"relay+ws://127.0.0.1:{link.port}"))
        async with httpx.AsyncClient() as http, AsyncExitStack() as stack:
            client, _ = await subscribed(stack, relay, channel)
            made = await publish_many(http, origin, channel, 2)
            await client.publications(2)
            made += await publish_past_history_while_cut(http, link, origin, relay, channel)
            await wait_for_ready(http, relay, 200)
            made.append(await publish(http, origin, channel, 99))
            # The relay's hub sees the hole and tells the client to resume (4504).
            code = await client.wait_closed(WAIT_S)
            _, resumed = await subscribed(
                stack, relay, channel, since={"epoch": made[1]["epoch"], "offset": 2}
            )

    assert code == 4504
    assert (resumed["recovered"], resumed["offset"]) == (False, made[-1]["offset"])


@pytest.mark.parametrize("scheme", ["relay+ws", "relay+http"])
async def test_a_gap_upstream_reaches_a_relays_clients_when_the_link_returns(
    tmp_path: Path, scheme: str
) -> None:
    """Not at the channel's next publication: none is made after the link returns."""
    channel = unique_channel("small")
    with ExitStack() as nodes:
        origin = nodes.enter_context(node(tmp_path / "origin"))
        link = nodes.enter_context(region_link(origin))
        relay = nodes.enter_context(node(tmp_path / "relay", f"{scheme}://127.0.0.1:{link.port}"))
        async with httpx.AsyncClient() as http, AsyncExitStack() as stack:
            client, _ = await subscribed(stack, relay, channel)
            made = await publish_many(http, origin, channel, 2)
            await client.publications(2)
            made += await publish_past_history_while_cut(http, link, origin, relay, channel)
            code = await client.wait_closed(WAIT_S)
            _, resumed = await subscribed(
                stack, relay, channel, since={"epoch": made[1]["epoch"], "offset": 2}
            )

    assert code == 4504
    assert (resumed["recovered"], resumed["offset"]) == (False, made[-1]["offset"])


# -- chains, and clients that move ------------------------------------------------------------


async def test_a_client_moves_between_chained_relays_and_the_origin_with_its_position(
    tmp_path: Path,
) -> None:
    channel = unique_channel()
    with ExitStack() as nodes:
        origin = nodes.enter_context(node(tmp_path / "origin"))
        region_a = nodes.enter_context(region_link(origin))
        regional = nodes.enter_context(
            node(tmp_path / "regional", f"relay+ws://127.0.0.1:{region_a.port}")
        )
        edge = nodes.enter_context(node(tmp_path / "edge", via(regional, "relay+http")))
        region_b = nodes.enter_context(region_link(origin))
        other = nodes.enter_context(
            node(tmp_path / "other", f"relay+http://127.0.0.1:{region_b.port}")
        )
        async with httpx.AsyncClient() as http, AsyncExitStack() as stack:
            at_edge, _ = await subscribed(stack, edge, channel)
            made = await publish_many(http, origin, channel, 5)
            received = await at_edge.publications(5)
            await at_edge.close()
            made += await publish_many(http, origin, channel, 3)

            held = {"epoch": received[-1]["epoch"], "offset": received[-1]["offset"]}
            _, at_origin = await subscribed(stack, origin, channel, since=held)
            received += at_origin["publications"]
            made += await publish_many(http, origin, channel, 2)

            held = {"epoch": received[-1]["epoch"], "offset": received[-1]["offset"]}
            _, at_other = await subscribed(stack, other, channel, since=held)
            received += at_other["publications"]

            held = {"epoch": received[-1]["epoch"], "offset": received[-1]["offset"]}
            back, at_edge_again = await subscribed(stack, edge, channel, since=held)
            made.append(await publish(http, origin, channel, 99))
            received += at_edge_again["publications"] + await back.publications(1)

    assert (at_origin["recovered"], at_other["recovered"], at_edge_again["recovered"]) == (
        True,
        True,
        True,
    )
    assert positions(received) == positions(made)


async def test_an_origin_restarted_with_a_new_epoch_reaches_a_relays_clients_as_a_gap(
    tmp_path: Path,
) -> None:
    channel, port = unique_channel(), free_port()
    with ExitStack() as nodes:
        origin = nodes.enter_context(node(tmp_path / "origin", port=port))
        relay = nodes.enter_context(node(tmp_path / "relay", via(origin)))
        async with httpx.AsyncClient() as http, AsyncExitStack() as stack:
            client, _ = await subscribed(stack, relay, channel)
            before = await publish(http, origin, channel, 1)
            await client.publications(1)
            origin.kill()  # the memory broker's history goes with it
            await wait_for_ready(http, relay, 503)
            with node(tmp_path / "origin-again", port=port) as restarted:
                await wait_for_ready(http, relay, 200)
                after = await publish(http, restarted, channel, 2)
                code = await client.wait_closed(WAIT_S)
                _, resumed = await subscribed(
                    stack, relay, channel, since={"epoch": before["epoch"], "offset": 1}
                )

    assert after["epoch"] != before["epoch"]
    assert code == 4504
    assert (resumed["recovered"], resumed["epoch"], resumed["offset"]) == (False, after["epoch"], 1)


async def test_a_relay_takes_the_token_renewed_in_its_file_at_its_next_connection(
    tmp_path: Path,
) -> None:
    channel = unique_channel("private")
    token_file = tmp_path / "relay.jwt"
    token_file.write_text(make_token("relay", expires_in_s=-10, channels=["private:*"]))
    relay_table = RELAY_TABLE + f'token_file = "{token_file}"\n'
    secret = {"TIDINGS_JWT_SECRET": JWT_SECRET}
    with ExitStack() as nodes:
        origin = nodes.enter_context(node(tmp_path / "origin", env=secret))
        relay = nodes.enter_context(
            node(tmp_path / "relay", via(origin), relay_table=relay_table, env=secret, wait=False)
        )
        async with httpx.AsyncClient() as http, AsyncExitStack() as stack:
            # The origin refuses the expired token (as it ends a link whose token
            # expires), and the relay keeps trying, reading the file each time.
            await wait_for_log(relay, "token has expired")
            refused_status = (await http.get(f"{relay.http_url}/ready")).status_code
            token_file.write_text(make_token("relay", channels=["private:*"]))
            await wait_for_ready(http, relay, 200)
            reader = make_token("reader", channels=["private:*"])
            client = await stack.enter_async_context(ws_client(f"{relay.ws_url}?token={reader}"))
            await client.result("subscribe", channel=channel)
            made = await publish(http, origin, channel, 1)
            received = await client.publications(1)

    assert refused_status == 503
    assert positions(received) == positions([made])


async def wait_for_log(server: ServerProcess, text: str) -> None:
    """Poll ``server``'s log (an observable condition) until a line holds ``text``."""
    try:
        async with asyncio.timeout(WAIT_S):
            while not any(text in line for line in server.log):  # noqa: ASYNC110
                await asyncio.sleep(0.05)
    except TimeoutError:
        pytest.fail(f"no log line with {text!r}:\n" + "\n".join(server.log))


async def test_channels_refused_for_the_upstreams_command_rate_are_subscribed_again(
    tmp_path: Path,
) -> None:
    channels = [unique_channel() for _ in range(8)]
    slow_commands = {"TIDINGS_COMMAND_RATE": "5", "TIDINGS_COMMAND_BURST": "3"}
    with ExitStack() as nodes:
        origin = nodes.enter_context(node(tmp_path / "origin", env=slow_commands))
        link = nodes.enter_context(region_link(origin))
        relay = nodes.enter_context(node(tmp_path / "relay", f"relay+ws://127.0.0.1:{link.port}"))
        async with httpx.AsyncClient() as http, AsyncExitStack() as stack:
            clients = [(await subscribed(stack, relay, channel))[0] for channel in channels]
            # The relay resubscribes all 8 at once; the upstream takes 3, then 5 a second.
            link.cut()
            await wait_for_ready(http, relay, 503)
            await wait_for_ready(http, relay, 200)
            made = [await publish(http, origin, channel, 1) for channel in channels]
            received = [(await client.publications(1))[0] for client in clients]

    assert positions(received) == positions(made)


async def test_short_and_long_polls_at_a_relay_follow_the_origins_positions(
    tmp_path: Path,
) -> None:
    channel = unique_channel()
    with node(tmp_path / "origin") as origin, node(tmp_path / "relay", via(origin)) as relay:
        async with httpx.AsyncClient(timeout=WAIT_S) as http:
            made = [await publish(http, origin, channel, 1)]
            since = f"{made[0]['epoch']}:0"
            short = (
                await http.get(
                    f"{relay.http_url}/poll", params={"channel": channel, "since": since}
                )
            ).json()
            waiting = asyncio.create_task(
                http.get(
                    f"{relay.http_url}/poll",
                    params={"channel": channel, "cursor": short["cursor"], "wait": 10},
                )
            )
            # The long poll holds until the origin's next publication reaches the relay.
            await wait_for_watchers(http, relay, channel)
            made.append(await publish(http, origin, channel, 2))
            long = (await waiting).json()

    assert (short["recovered"], positions(short["publications"])) == (True, positions(made[:1]))
    assert (long["recovered"], positions(long["publications"])) == (True, positions(made[1:]))


async def wait_for_watchers(http: httpx.AsyncClient, server: ServerProcess, channel: str) -> None:
    """Poll ``/api/channels`` (an observable condition) until a client waits on ``channel``."""
    headers = {"Authorization": f"Bearer {API_KEY}"}
    try:
        async with asyncio.timeout(WAIT_S):
            url = f"{server.http_url}/api/channels"
            while channel not in (await http.get(url, headers=headers)).json()["channels"]:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
    except TimeoutError:
        pytest.fail(f"no long poll waits on {channel}")
