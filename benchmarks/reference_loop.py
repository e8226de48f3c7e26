"""The reference loop: parse + update a small ``__slots__`` state per customer in plain Python.

It is the practical ceiling for a pure-Python hot path (issue 3); every other
hot-path figure is quoted as a ratio of it, measured in the same run.
"""

from __future__ import annotations

import orjson


class _Small:
    __slots__ = ("n", "last_ts", "last_step", "flags")

    def __init__(self) -> None:
        self.n = 0
        self.last_ts = 0
        self.last_step: str | None = None
        self.flags = 0


def reference_loop(lines: list[bytes]) -> int:
    """Parse each line and update its customer's small state; return the customer count."""
    states: dict[str, _Small] = {}
    loads = orjson.loads
    for raw in lines:
        d = loads(raw)
        cid = d["customer_id"]
        st = states.get(cid)
        if st is None:
            st = states[cid] = _Small()
        st.n += 1
        ts = d["ts"]
        if ts > st.last_ts:
            st.last_ts = ts
            st.last_step = d.get("step")
        if d["type"] == "fail":
            st.flags |= 1
    return len(states)
