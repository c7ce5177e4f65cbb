"""The idempotency window of one channel (core/dedupe.py, docs/protocol.md §2.4)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tidings.core.dedupe import DedupeOptions, DedupeWindow, RememberedKey, dedupe_key
from tidings.core.publication import ClientInfo


def test_dedupe_options_default_to_a_300_second_window() -> None:
    assert DedupeOptions() == DedupeOptions(window_ms=300_000, max_keys=100_000)


def test_dedupe_lookup_of_an_unknown_key_finds_nothing() -> None:
    window = DedupeWindow(DedupeOptions())
    assert window.lookup("k", now_ms=0) is None
    assert len(window) == 0


def test_dedupe_lookup_finds_the_offset_a_key_was_published_at() -> None:
    window = DedupeWindow(DedupeOptions(window_ms=100))
    window.remember("a", 7, now_ms=1000)
    window.remember("b", 8, now_ms=1010)
    assert window.lookup("a", now_ms=1050) == 7
    assert window.lookup("b", now_ms=1050) == 8
    assert window.lookup("c", now_ms=1050) is None


def test_dedupe_keeps_a_key_exactly_window_old_and_forgets_it_one_ms_later() -> None:
    window = DedupeWindow(DedupeOptions(window_ms=100))
    window.remember("a", 1, now_ms=1000)
    assert window.lookup("a", now_ms=1100) == 1
    assert window.lookup("a", now_ms=1101) is None
    assert len(window) == 0


def test_dedupe_expiry_forgets_only_the_keys_past_the_window() -> None:
    window = DedupeWindow(DedupeOptions(window_ms=100))
    window.remember("a", 1, now_ms=0)
    window.remember("b", 2, now_ms=50)
    window.remember("c", 3, now_ms=120)
    assert window.lookup("c", now_ms=160) == 3
    assert len(window) == 1
    assert window.lookup("b", now_ms=160) is None


def test_dedupe_window_is_bounded_by_max_keys_forgetting_the_oldest_first() -> None:
    window = DedupeWindow(DedupeOptions(window_ms=1_000_000, max_keys=3))
    for offset, key in enumerate("abcde", start=1):
        window.remember(key, offset, now_ms=offset)
    assert len(window) == 3
    assert [window.lookup(key, now_ms=10) for key in "abcde"] == [None, None, 3, 4, 5]


def test_dedupe_window_with_max_keys_zero_remembers_nothing() -> None:
    window = DedupeWindow(DedupeOptions(max_keys=0))
    window.remember("a", 1, now_ms=0)
    assert len(window) == 0
    assert window.lookup("a", now_ms=0) is None


def test_dedupe_remembering_a_key_again_lets_older_keys_expire() -> None:
    window = DedupeWindow(DedupeOptions(window_ms=100))
    window.remember("a", 1, now_ms=0)
    window.remember("b", 2, now_ms=50)
    window.remember("a", 3, now_ms=200)
    # b was remembered 150 ms ago, past the 100 ms window
    assert window.lookup("b", now_ms=200) is None


@given(
    window_ms=st.integers(min_value=1, max_value=50),
    max_keys=st.integers(min_value=0, max_value=6),
    steps=st.lists(
        st.tuples(st.sampled_from("abcdefgh"), st.integers(min_value=0, max_value=20)),
        max_size=60,
    ),
)
def test_dedupe_finds_a_key_only_within_the_window_and_the_newest_max_keys(
    window_ms: int, max_keys: int, steps: list[tuple[str, int]]
) -> None:
    """Used as ChannelLog uses it: remember a key only when lookup did not find it."""
    window = DedupeWindow(DedupeOptions(window_ms=window_ms, max_keys=max_keys))
    remembered: list[tuple[str, int, int]] = []  # (key, offset, ms), in order
    now = 0
    for key, elapsed in steps:
        now += elapsed
        latest = max((i for i, (k, _, _) in enumerate(remembered) if k == key), default=None)
        expected = None
        if latest is not None:
            _, offset, at_ms = remembered[latest]
            newer = len(remembered) - 1 - latest
            if at_ms >= now - window_ms and newer < max_keys:
                expected = offset
        assert window.lookup(key, now) == expected
        if expected is None:
            window.remember(key, len(remembered) + 1, now)
            remembered.append((key, len(remembered) + 1, now))
        assert len(window) <= max_keys


def test_a_server_key_is_remembered_as_it_is() -> None:
    assert dedupe_key("order-7", None) == "order-7"


keys = st.text(min_size=1, max_size=20).filter(lambda key: "\x00" not in key)


@given(user=st.text(max_size=10), key=keys, server_key=keys)
def test_a_clients_key_never_meets_a_server_key(user: str, key: str, server_key: str) -> None:
    assert dedupe_key(key, ClientInfo("c1", user)) != dedupe_key(server_key, None)


@given(a=st.tuples(st.text(max_size=10), keys), b=st.tuples(st.text(max_size=10), keys))
def test_client_keys_meet_only_for_the_same_user_and_key(
    a: tuple[str, str], b: tuple[str, str]
) -> None:
    same = dedupe_key(a[1], ClientInfo("c1", a[0])) == dedupe_key(b[1], ClientInfo("c2", b[0]))
    assert same == (a == b)


# Hand-over (core/dedupe.py ``entries`` and ``adopt``): the window moves whole, each key
# at its original time.


def test_dedupe_entries_are_the_keys_inside_the_window_oldest_first() -> None:
    window = DedupeWindow(DedupeOptions(window_ms=100))
    window.remember("a", 1, now_ms=0)
    window.remember("b", 2, now_ms=50)
    window.remember("c", 3, now_ms=120)
    assert window.entries(now_ms=150) == (RememberedKey("b", 2, 50), RememberedKey("c", 3, 120))


def test_dedupe_adopted_keys_expire_at_their_original_time_not_at_adoption() -> None:
    window = DedupeWindow(DedupeOptions(window_ms=100))
    window.adopt([RememberedKey("a", 1, 0), RememberedKey("b", 2, 80)])
    assert window.lookup("a", now_ms=100) == 1
    assert window.lookup("a", now_ms=101) is None
    assert window.lookup("b", now_ms=180) == 2
    assert window.lookup("b", now_ms=181) is None


def test_dedupe_adopted_keys_are_merged_in_time_order_with_those_remembered() -> None:
    window = DedupeWindow(DedupeOptions(window_ms=100))
    window.remember("late", 9, now_ms=90)
    window.adopt([RememberedKey("early", 3, 10)])
    # Expiry reads the front: the older adopted key goes first, the later one stays.
    assert window.entries(now_ms=150) == (RememberedKey("late", 9, 90),)


def test_dedupe_adoption_keeps_a_key_already_remembered_as_it_is() -> None:
    window = DedupeWindow(DedupeOptions(window_ms=100))
    window.remember("a", 4, now_ms=50)
    window.adopt([RememberedKey("a", 1, 0)])
    assert window.entries(now_ms=60) == (RememberedKey("a", 4, 50),)


def test_dedupe_adoption_is_bounded_by_max_keys_keeping_the_newest() -> None:
    window = DedupeWindow(DedupeOptions(window_ms=1_000, max_keys=2))
    window.remember("b", 2, now_ms=20)
    window.adopt([RememberedKey("a", 1, 10), RememberedKey("c", 3, 30)])
    assert [k.key for k in window.entries(now_ms=40)] == ["b", "c"]


@given(
    kept=st.lists(
        st.tuples(st.sampled_from("abcdefgh"), st.integers(min_value=0, max_value=40)),
        max_size=20,
    ),
    now_ms=st.integers(min_value=40, max_value=80),
)
def test_dedupe_a_window_adopted_from_its_entries_answers_as_the_original(
    kept: list[tuple[str, int]], now_ms: int
) -> None:
    options = DedupeOptions(window_ms=30, max_keys=5)
    original = DedupeWindow(options)
    for offset, (key, at_ms) in enumerate(sorted(kept, key=lambda step: step[1]), start=1):
        original.remember(key, offset, at_ms)
    copy = DedupeWindow(options)
    copy.adopt(original.entries(now_ms=40))
    for key in "abcdefgh":
        assert copy.lookup(key, now_ms) == original.lookup(key, now_ms)
