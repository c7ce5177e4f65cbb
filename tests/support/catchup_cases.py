"""The shared table of the live catch-up rule, ``clients/catchup_cases.json``, typed.

The server's rule (``tidings.core.catchup``) and the clients' copies (the Python
client's ``PositionTracker``, the JavaScript client's ``core.js``) are all checked
against this one table; the JavaScript tests read the same file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from tidings.core.catchup import CatchUp
from tidings.core.publication import Position

CASES_PATH: Final = Path(__file__).parents[2] / "clients" / "catchup_cases.json"


@dataclass(frozen=True, slots=True)
class CatchUpCase:
    """One row: what a publication at ``publication`` is to a holder of ``held``."""

    why: str
    held: Position | None
    left: frozenset[str]
    publication: Position
    outcome: CatchUp


def _position(pair: list[object]) -> Position:
    epoch, offset = pair
    assert isinstance(epoch, str), pair
    assert isinstance(offset, int), pair
    return Position(epoch, offset)


def load_cases() -> list[CatchUpCase]:
    """Read the table."""
    rows = json.loads(CASES_PATH.read_text())["cases"]
    return [
        CatchUpCase(
            why=row["why"],
            held=None if row["held"] is None else _position(row["held"]),
            left=frozenset(row["left"]),
            publication=_position(row["publication"]),
            outcome=CatchUp(row["outcome"]),
        )
        for row in rows
    ]


CATCHUP_CASES: Final = load_cases()
