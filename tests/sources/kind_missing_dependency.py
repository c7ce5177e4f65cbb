"""A source kind whose dependency is not installed (for the registry's missing-extra test)."""

from __future__ import annotations

import tidings_test_no_such_package  # type: ignore[import-not-found]  # missing on purpose

__all__ = ["tidings_test_no_such_package"]
