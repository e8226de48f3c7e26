"""Fixtures shared by the unit tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from flows.recent import RECENT, Recent
from flows.shard_registry import SHARDS


@pytest.fixture
def recent() -> Iterator[Recent]:
    """The process's look-up store, on and empty, and no shards registered (both cleared again afterwards)."""
    RECENT.clear(enabled=True)
    SHARDS.clear()
    yield RECENT
    RECENT.clear()
    SHARDS.clear()
