"""Whole numbers in URL text (core/digits.py): what parses, and what is refused before
Python's own conversion limit could turn it into a 500."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from tidings.core.digits import MAX_DIGITS, parse_digits


@given(st.integers(min_value=0, max_value=10**MAX_DIGITS - 1))
def test_every_number_of_up_to_twenty_digits_parses_to_its_value(value: int) -> None:
    assert parse_digits(str(value)) == value


@given(st.integers(min_value=MAX_DIGITS + 1, max_value=20_000))
def test_a_number_of_more_digits_is_refused_however_long(length: int) -> None:
    assert parse_digits("9" * length) is None


@given(st.text(max_size=30).filter(lambda text: not (text.isascii() and text.isdigit())))
def test_anything_but_ascii_digits_is_refused(text: str) -> None:
    assert parse_digits(text) is None
