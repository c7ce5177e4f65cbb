"""Whole numbers written in decimal, as URLs carry them (``since``, ``wait``, ``limit``,
``since_offset``). Pure.

One parser for every number a request gives in text, so that every transport refuses
the same inputs the same way. A number is 1 to ``MAX_DIGITS`` ASCII digits: more than
any offset or count tidings uses, and few enough that converting it is cheap (Python
refuses to convert integers past 4,300 digits, with a ``ValueError`` that would
otherwise surface as a 500).
"""

from __future__ import annotations

from typing import Final

# 2**64 has 20 digits; no offset, limit or time-out comes near it.
MAX_DIGITS: Final = 20


def parse_digits(text: str) -> int | None:
    """Return the value of ``text`` if it is 1 to ``MAX_DIGITS`` ASCII digits, else ``None``."""
    if not 0 < len(text) <= MAX_DIGITS or not text.isascii() or not text.isdigit():
        return None
    return int(text)
