"""An application's key handler on a node served on a real socket
(server/key_ownership.py): ``gained`` is awaited once before the first subscribe,
publish or history read of a key; ``lost`` when the key is idle, when a new ring gives
it elsewhere, when it is released, and for every key when the node stops; a hold sees
the state loaded and delays ``lost``; a failing handler is one WARNING line and the
node serves on."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Final

import httpx
import pytest

from tests.support.served import served
from tests.support.ws import WsClient, ws_client
from tidings.core.channel import ChannelName
from tidings.core.placement import HERE, Here, Moved
from tidings.core.recovery import Replay
from tidings.core.ring import HashRing
from tidings.core.routing import FollowingPlacement
from tidings.errors import Unavailable
from tidings.server.app import TidingsApp
from tidings.server.config import Settings
from tidings.server.key_hooks import KeyHooks
from tidings.server.keyed_broker import KeyedBroker
from tidings.server.status import status_channel

API_KEY: Final = "key-ownership-test-key"
AUTH: Final = {"authorization": f"Bearer {API_KEY}"}
WAIT_S: Final = 10.0
B_URL: Final = "http://b.invalid:8000"
RING: Final = HashRing(["a", "b"])


def owned_by(node: str, prefix: str) -> str:
    return next(c for c in (f"{prefix}{n}" for n in range(1000)) if RING.owner(c) == node)


class RecordingHandler:
    """Records each call in order; a key in ``gates`` makes its calls wait for it;
    a key in ``failing`` makes them raise."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.gates: dict[str, asyncio.Event] = {}
        self.failing: set[str] = set()
        self._queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue()

    async def _called(self, kind: str, key: str) -> None:
        self.calls.append((kind, key))
        self._queue.put_nowait((kind, key))
        gate = self.gates.get(key)
        if gate is not None:
            await gate.wait()
        if key in self.failing:
            raise RuntimeError(f"the store is down for {key}")

    async def gained(self, key: str) -> None:
        await self._called("gained", key)

    async def lost(self, key: str) -> None:
        await self._called("lost", key)

    async def next_call(self) -> tuple[str, str]:
        return await asyncio.wait_for(self._queue.get(), WAIT_S)


@asynccontextmanager
async def node(
    handler: RecordingHandler,
    *,
    idle_s: float = 300.0,
    placement: FollowingPlacement | None = None,
    namespaces: tuple[str, ...] | None = None,
    call_timeout_s: float = 30.0,
    concurrency: int = 64,
) -> AsyncIterator[tuple[TidingsApp, str]]:
    settings = Settings(node_id="a", api_key=API_KEY)
    hooks = KeyHooks(
        handler,
        idle_s=idle_s,
        namespaces=namespaces,
        call_timeout_s=call_timeout_s,
        concurrency=concurrency,
    )
    app = TidingsApp(settings, placement=placement, key_hooks=hooks)
    async with served(app) as url:
        if placement is not None:
            placement.receive_ring({"a": url, "b": B_URL}, 1)
            app.keys.receive_ring()
        yield app, url


@asynccontextmanager
async def subscribed(url: str, channel: str) -> AsyncIterator[WsClient]:
    async with ws_client(url.replace("http", "ws") + "/ws") as ws:
        await ws.result("connect")
        await ws.result("subscribe", channel=channel)
        yield ws


async def test_gained_is_awaited_once_before_the_first_subscribe_of_a_key_is_served() -> None:
    handler = RecordingHandler()
    handler.gates["doc:1"] = gate = asyncio.Event()
    async with (
        node(handler) as (_, url),
        ws_client(url.replace("http", "ws") + "/ws") as first,
        ws_client(url.replace("http", "ws") + "/ws") as second,
    ):
        await first.result("connect")
        await second.result("connect")
        subscribing = [
            asyncio.create_task(ws.result("subscribe", channel="doc:1")) for ws in (first, second)
        ]
        assert await handler.next_call() == ("gained", "doc:1")
        # Both subscribes wait for the one gained.
        done, _ = await asyncio.wait(subscribing, timeout=0.2)
        assert not done
        gate.set()
        await asyncio.gather(*subscribing)
    assert handler.calls[:1] == [("gained", "doc:1")]
    assert handler.calls.count(("gained", "doc:1")) == 1


async def test_a_publish_and_a_history_read_gain_their_keys_and_each_key_once() -> None:
    handler = RecordingHandler()
    async with node(handler) as (app, url), httpx.AsyncClient() as client:
        await app.publish("doc:1", {"n": 1})
        await app.publish("doc:1", {"n": 2})
        answer = await client.get(f"{url}/api/history", params={"channel": "doc:2"}, headers=AUTH)
        assert answer.status_code == 200
        assert sorted(app.keys.held()) == ["doc:1", "doc:2"]
        assert handler.calls == [("gained", "doc:1"), ("gained", "doc:2")]


async def test_a_user_namespace_channel_gains_its_users_key() -> None:
    handler = RecordingHandler()
    async with node(handler) as (app, _):
        await app.publish("user:42", {"n": 1})
        assert handler.calls == [("gained", "user:42")]
        assert app.keys.key_of("user:42") == "user:42"


async def test_only_the_handled_namespaces_and_never_tidings_own_channels_are_told() -> None:
    handler = RecordingHandler()
    async with node(handler, namespaces=("doc",)) as (app, _):
        await app.publish("room:1", {"n": 1})
        await app.hub.publish(status_channel("a"), b"{}")
        await app.publish("doc:1", {"n": 1})
        assert handler.calls == [("gained", "doc:1")]
    other = RecordingHandler()
    async with node(other) as (app, _):
        await app.hub.publish(status_channel("a"), b"{}")
        await app.publish("room:1", {"n": 1})
        assert other.calls[:1] == [("gained", "room:1")]


async def test_a_failing_gained_is_one_warning_with_the_key_and_the_node_serves_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    handler = RecordingHandler()
    handler.failing.add("doc:1")
    async with node(handler) as (app, _):
        with caplog.at_level(logging.WARNING, "tidings.server.key_ownership"):
            first = await app.publish("doc:1", {"n": 1})
        assert first.offset == 1  # served, without the application's state
        [record] = [r for r in caplog.records if r.name == "tidings.server.key_ownership"]
        assert record.levelno == logging.WARNING
        assert "'doc:1'" in record.getMessage()
        assert "the store is down for doc:1" in record.getMessage()
        assert record.exc_info is None
        assert app.keys.held() == []
        # Not gained: the next request tries again; a hold says the state is missing.
        await app.publish("doc:1", {"n": 2})
        assert handler.calls == [("gained", "doc:1"), ("gained", "doc:1")]
        with pytest.raises(Unavailable, match="could not load doc:1"):
            async with app.keys.hold("doc:1"):
                pass
        handler.failing.clear()
        async with app.keys.hold("doc:1") as place:
            assert place is HERE
        assert app.keys.held() == ["doc:1"]


async def test_an_idle_key_is_lost_but_one_with_a_subscriber_is_kept() -> None:
    handler = RecordingHandler()
    async with node(handler, idle_s=0.1) as (app, url):
        async with subscribed(url, "doc:watched"):
            assert await handler.next_call() == ("gained", "doc:watched")
            await app.publish("doc:idle", {"n": 1})
            assert await handler.next_call() == ("gained", "doc:idle")
            # doc:watched was touched before doc:idle: idle, it would be lost first.
            assert await handler.next_call() == ("lost", "doc:idle")
            assert app.keys.held() == ["doc:watched"]
        # Its last subscriber gone, it idles out too.
        assert await handler.next_call() == ("lost", "doc:watched")
        assert app.keys.held() == []
        # Lost keys cost nothing; the next request gains the key again.
        await app.publish("doc:idle", {"n": 2})
        assert await handler.next_call() == ("gained", "doc:idle")
        assert await handler.next_call() == ("lost", "doc:idle")
        # However many keys were used, the idle ones go: the keys held stay bounded.
        many = [f"doc:many-{n}" for n in range(200)]
        for key in many:
            await app.publish(key, {"n": 1})
        calls = [await handler.next_call() for _ in range(2 * len(many))]
        assert sorted(calls) == sorted([("gained", k) for k in many] + [("lost", k) for k in many])
        assert app.keys.held() == []


async def test_a_failing_lost_is_logged_and_the_key_is_dropped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    handler = RecordingHandler()
    async with node(handler, idle_s=0.1) as (app, _):
        await app.publish("doc:1", {"n": 1})
        handler.failing.add("doc:1")
        with caplog.at_level(logging.WARNING, "tidings.server.key_ownership"):
            assert await handler.next_call() == ("gained", "doc:1")
            assert await handler.next_call() == ("lost", "doc:1")
            handler.failing.clear()
            await app.publish("doc:1", {"n": 2})  # gained again once lost returned
            assert await handler.next_call() == ("gained", "doc:1")
        [record] = [r for r in caplog.records if r.name == "tidings.server.key_ownership"]
        assert "lost('doc:1') failed" in record.getMessage()


async def test_a_new_ring_loses_the_keys_it_gives_to_another_node_and_hold_names_it() -> None:
    handler = RecordingHandler()
    placement = FollowingPlacement("a", "http://a.invalid", Settings().namespace_table())
    moving, staying = owned_by("b", "doc:moving-"), owned_by("a", "doc:staying-")
    async with node(handler, placement=placement) as (app, url):
        placement.receive_ring({"a": url}, 2)  # a alone: it owns both
        app.keys.receive_ring()
        await app.publish(moving, 1)
        await app.publish(staying, 1)
        assert sorted(app.keys.held()) == sorted([moving, staying])
        placement.receive_ring({"a": url, "b": B_URL}, 3)
        app.keys.receive_ring()
        assert await handler.next_call() == ("gained", moving)
        assert await handler.next_call() == ("gained", staying)
        assert await handler.next_call() == ("lost", moving)
        assert app.keys.held() == [staying]
        async with app.keys.hold(moving) as place:
            assert place == Moved(B_URL)
        async with app.keys.hold(staying) as place:
            assert place is HERE


async def test_lost_waits_for_a_hold_and_a_released_key_waits_for_the_next_ring() -> None:
    handler = RecordingHandler()
    placement = FollowingPlacement("a", "http://a.invalid", Settings().namespace_table())
    key = owned_by("a", "doc:")
    async with node(handler, placement=placement) as (app, url):
        async with app.keys.hold(key) as place:
            assert place is HERE
            assert handler.calls == [("gained", key)]
            releasing = asyncio.create_task(app.keys.release([key]))
            done, _ = await asyncio.wait([releasing], timeout=0.2)
            assert not done  # lost waits for the hold
            assert handler.calls == [("gained", key)]
            await app.publish(key, {"inside": "the hold"})  # the holder may still publish
        await releasing
        assert handler.calls == [("gained", key), ("lost", key)]

        # Released: a new hold waits for the next ring, then gains the key again.
        async def hold_once() -> object:
            async with app.keys.hold(key) as place:
                return place

        holding = asyncio.create_task(hold_once())
        held_yet, _ = await asyncio.wait([holding], timeout=0.2)
        assert not held_yet
        placement.receive_ring({"a": url, "b": B_URL}, 4)
        app.keys.receive_ring()
        assert await holding is HERE
        assert handler.calls[-1] == ("gained", key)


async def test_stopping_loses_every_key_held_and_take_gains_at_once() -> None:
    handler = RecordingHandler()
    async with node(handler) as (app, _):
        await app.keys.take(["doc:1", "user:7"])
        assert sorted(handler.calls) == [("gained", "doc:1"), ("gained", "user:7")]
        assert sorted(app.keys.held()) == ["doc:1", "user:7"]
        await app.publish("doc:2", 1)
    assert sorted(handler.calls[:3]) == [
        ("gained", "doc:1"),
        ("gained", "doc:2"),
        ("gained", "user:7"),
    ]
    assert sorted(handler.calls[3:]) == [("lost", "doc:1"), ("lost", "doc:2"), ("lost", "user:7")]


async def test_a_node_that_leaves_saves_every_key_and_gains_none_after() -> None:
    handler = RecordingHandler()
    placement = FollowingPlacement("a", "http://a.invalid", Settings().namespace_table())
    held, later = owned_by("a", "doc:held-"), owned_by("a", "doc:later-")
    async with node(handler, placement=placement) as (app, _):
        await app.publish(held, 1)
        await app.keys.release_all()  # what the drain does before leaving the ring
        assert handler.calls == [("gained", held), ("lost", held)]
        await app.publish(later, 1)  # served, without the handler: the node is leaving
        assert handler.calls == [("gained", held), ("lost", held)]

        async def hold_once() -> Here | Moved:
            async with app.keys.hold(later) as place:
                return place

        holding = asyncio.create_task(hold_once())
        held_yet, _ = await asyncio.wait([holding], timeout=0.2)
        assert not held_yet  # it waits for the ring without this node
        placement.receive_ring({"b": B_URL}, 5)
        app.keys.receive_ring()
        assert await holding == Moved(B_URL)
        assert handler.calls == [("gained", held), ("lost", held)]


class CountingHandler:
    """Counts the calls running at once; each yields to the loop a few times, as a
    call to a database would."""

    def __init__(self) -> None:
        self.running = 0
        self.most = 0
        self.calls = 0

    async def _call(self) -> None:
        self.running += 1
        self.calls += 1
        self.most = max(self.most, self.running)
        for _ in range(5):
            await asyncio.sleep(0)
        self.running -= 1

    async def gained(self, key: str) -> None:
        await self._call()

    async def lost(self, key: str) -> None:
        await self._call()


async def test_at_most_concurrency_handler_calls_run_at_once() -> None:
    handler = CountingHandler()
    app = TidingsApp(Settings(node_id="a"), key_hooks=KeyHooks(handler, concurrency=2))
    async with served(app):
        await app.keys.take([f"doc:{n}" for n in range(6)])
        assert handler.most == 2
        await app.keys.release_all()
    assert handler.calls == 12
    assert handler.most == 2


async def test_release_where_gives_away_the_keys_a_transition_moves_known_or_not() -> None:
    handler = RecordingHandler()
    placement = FollowingPlacement("a", "http://a.invalid", Settings().namespace_table())
    async with node(handler, placement=placement) as (app, url):
        placement.receive_ring({"a": url}, 2)
        app.keys.receive_ring()
        await app.publish("doc:1", 1)
        await app.keys.release_where(lambda key: key.startswith("doc:"))  # the seal
        assert handler.calls == [("gained", "doc:1"), ("lost", "doc:1")]
        await app.publish("doc:2", 1)  # moving too: served without the handler
        await app.publish("room:1", 1)  # not moving: gained
        assert handler.calls[2:] == [("gained", "room:1")]
        placement.receive_ring({"a": url}, 3)  # the final ring gives doc:2 back here
        app.keys.receive_ring()
        await app.publish("doc:2", 2)
        assert handler.calls[3:] == [("gained", "doc:2")]


def test_namespaces_given_as_one_string_are_refused() -> None:
    with pytest.raises(ValueError, match="list of names"):
        KeyHooks(RecordingHandler(), namespaces="doc")


@pytest.mark.parametrize("call_timeout_s", [0.0, -1.0, float("nan")])
def test_a_call_timeout_that_is_not_positive_is_refused(call_timeout_s: float) -> None:
    with pytest.raises(ValueError, match="call_timeout_s must be positive"):
        KeyHooks(RecordingHandler(), call_timeout_s=call_timeout_s)


async def test_without_hooks_the_broker_is_not_wrapped_and_hold_only_places() -> None:
    app = TidingsApp(Settings(node_id="a"))
    assert not app.keys.has_handler
    assert not isinstance(app.hub.broker, KeyedBroker)
    async with app.keys.hold("doc:1") as place:
        assert place is HERE
    assert app.keys.key_of(ChannelName("doc:1")) == "doc:1"


async def test_a_new_rings_clients_move_only_once_the_keys_it_gave_away_are_lost() -> None:
    handler = RecordingHandler()
    placement = FollowingPlacement("a", "http://a.invalid", Settings().namespace_table())
    moving = owned_by("b", "doc:moving-")
    moved = asyncio.Event()
    async with node(handler, placement=placement) as (app, url):
        placement.receive_ring({"a": url}, 2)
        app.keys.receive_ring()
        await app.publish(moving, 1)
        handler.gates[moving] = gate = asyncio.Event()
        placement.receive_ring({"a": url, "b": B_URL}, 3)
        app.keys.receive_ring(then=moved.set)
        assert await handler.next_call() == ("gained", moving)
        assert await handler.next_call() == ("lost", moving)
        assert not moved.is_set()  # lost has not returned: its clients stay
        gate.set()
        await asyncio.wait_for(moved.wait(), WAIT_S)
        # A ring that gives nothing away moves its clients at once.
        moved.clear()
        placement.receive_ring({"a": url, "b": B_URL}, 4)
        app.keys.receive_ring(then=moved.set)
        assert moved.is_set()


class AnnouncingHandler:
    """Publishes the state it loads in the key's channel, and holds the key while
    saving: a handler's own requests of its key must not wait for its own call."""

    def __init__(self) -> None:
        self.app: TidingsApp | None = None
        self.lost_places: list[Here | Moved] = []

    async def gained(self, key: str) -> None:
        assert self.app is not None
        await self.app.publish(key, {"loaded": key})

    async def lost(self, key: str) -> None:
        assert self.app is not None
        async with self.app.keys.hold(key) as place:
            self.lost_places.append(place)


async def test_a_handler_may_publish_and_hold_its_own_key() -> None:
    handler = AnnouncingHandler()
    app = TidingsApp(Settings(node_id="a"), key_hooks=KeyHooks(handler))
    handler.app = app
    async with served(app):
        position = await asyncio.wait_for(app.publish("doc:1", {"n": 1}), WAIT_S)
        assert position.offset == 2  # after the state gained published
        read = await app.hub.history(ChannelName("doc:1"))
        assert isinstance(read.recovery, Replay)
        assert [p.data for p in read.recovery.publications] == [
            b'{"loaded":"doc:1"}',
            b'{"n":1}',
        ]
        await asyncio.wait_for(app.keys.release_all(), WAIT_S)
    assert handler.lost_places == [HERE]


# A handler's call that hangs (its database does not answer) is cancelled after
# ``call_timeout_s``. These nodes allow one call at a time, so a call after a cancelled
# one shows that the cancelled call freed its slot.
CALL_TIMEOUT_S: Final = 0.2


def own_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "tidings.server.key_ownership" and r.levelno == logging.WARNING
    ]


async def test_a_hanging_gained_is_cancelled_and_the_next_request_gains_the_key(
    caplog: pytest.LogCaptureFixture,
) -> None:
    handler = RecordingHandler()
    handler.gates["doc:1"] = asyncio.Event()  # never set: the store does not answer
    async with node(handler, call_timeout_s=CALL_TIMEOUT_S, concurrency=1) as (app, _):
        with (
            caplog.at_level(logging.WARNING, "tidings.server.key_ownership"),
            pytest.raises(Unavailable, match="could not load doc:1; retry shortly"),
        ):
            async with app.keys.hold("doc:1"):
                pass
        [warning] = own_warnings(caplog)
        assert "gained('doc:1') did not return within 0.2 s" in warning
        assert "the key is not gained" in warning
        assert app.keys.held() == []
        del handler.gates["doc:1"]  # the store answers again
        async with app.keys.hold("doc:1") as place:
            assert place is HERE
        assert handler.calls == [("gained", "doc:1"), ("gained", "doc:1")]
        assert app.keys.held() == ["doc:1"]


async def test_a_hanging_lost_is_cancelled_and_the_key_released_then_gained_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    handler = RecordingHandler()
    hanging = node(handler, idle_s=0.1, call_timeout_s=CALL_TIMEOUT_S, concurrency=1)
    async with hanging as (app, _):
        await app.publish("doc:1", {"n": 1})
        # Gained; before the key can idle, its store stops answering.
        handler.gates["doc:1"] = asyncio.Event()  # never set
        assert await handler.next_call() == ("gained", "doc:1")
        with caplog.at_level(logging.WARNING, "tidings.server.key_ownership"):
            assert await handler.next_call() == ("lost", "doc:1")  # idle
            del handler.gates["doc:1"]  # the lost under way still waits
            # Once the lost is cancelled, the key is released and gained again.
            await app.publish("doc:1", {"n": 2})
            assert await handler.next_call() == ("gained", "doc:1")
        [warning] = own_warnings(caplog)
        assert "lost('doc:1') did not return within 0.2 s" in warning
        assert "released without its state saved being confirmed" in warning


async def test_a_seal_and_a_leave_complete_though_a_lost_hangs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    handler = RecordingHandler()
    placement = FollowingPlacement("a", "http://a.invalid", Settings().namespace_table())
    sealed, left = owned_by("a", "doc:sealed-"), owned_by("a", "doc:left-")
    hanging = node(handler, placement=placement, call_timeout_s=CALL_TIMEOUT_S, concurrency=1)
    async with hanging as (app, url):
        await app.publish(sealed, 1)
        await app.publish(left, 1)
        for key in (sealed, left):
            handler.gates[key] = asyncio.Event()  # never set
        with caplog.at_level(logging.WARNING, "tidings.server.key_ownership"):
            # A hand-over's seal: it returns, and the giver may write its "handed" mark.
            await asyncio.wait_for(app.keys.release_where(lambda key: key == sealed), WAIT_S)
            assert app.keys.held() == [left]
            # The final ring gives the key back here: gained again.
            del handler.gates[sealed]
            placement.receive_ring({"a": url, "b": B_URL}, 2)
            app.keys.receive_ring()
            await app.publish(sealed, 2)
            # A planned leave: it returns, and the node may leave the ring.
            await asyncio.wait_for(app.keys.release_all(), WAIT_S)
        assert handler.calls == [
            ("gained", sealed),
            ("gained", left),
            ("lost", sealed),
            ("gained", sealed),
            *sorted([("lost", sealed), ("lost", left)]),
        ]
        warnings = own_warnings(caplog)
        assert len(warnings) == 2
        assert f"lost({sealed!r}) did not return" in warnings[0]
        assert f"lost({left!r}) did not return" in warnings[1]
