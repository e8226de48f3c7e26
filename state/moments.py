"""Moment identity and records (schema v1, DESIGN.md §5)."""

from __future__ import annotations

import hashlib
from typing import Final

SCHEMA_VERSION: Final = 1


def moment_id(customer_id: str, rule: str, anchor_event_id: str) -> str:
    """Return the deterministic id of a moment.

    Args:
        customer_id: The customer key.
        rule: Rule name, e.g. ``cart.abandoned``.
        anchor_event_id: The event that anchors the moment.

    Returns:
        32 hex characters; identical across replays and restarts.
    """
    h = hashlib.blake2b(digest_size=16)
    for part in (customer_id, rule, anchor_event_id):
        b = part.encode("utf-8", "surrogatepass")
        h.update(len(b).to_bytes(4, "big"))
        h.update(b)
    return h.hexdigest()
