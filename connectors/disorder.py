"""How the sources report disorder: how far behind their partition's newest event time events arrive."""

from __future__ import annotations

from collections.abc import Callable

DisorderHook = Callable[[str, int, int, list[int]], None]
"""``on_disorder(source, partition, in_order, behind_ms)``, once per batch: events at or past the partition's
newest event time, and how far behind it (ms) each other event came."""
