"""Process-wide running totals for the live status line and the end-of-run summary."""

from __future__ import annotations

import threading
import time
from collections import Counter

from state.outputs import Outputs


class RunStats:
    """Totals of one process, updated once per output batch."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.started = time.monotonic()
        self.events = 0
        self.invalid = 0
        self.late = 0
        self.moments: Counter[str] = Counter()
        self.customers: dict[str, int] = {}
        self.watermark_ms = 0
        self.max_ts_ms = 0
        self._last = (time.monotonic(), 0)
        self.live = False  # watermark lag against the wall clock means something only in live mode

    def add(self, key: str, out: Outputs) -> None:
        """Account one shard's outputs."""
        with self._lock:
            self.events += sum(out.events.values())
            self.invalid += sum(out.invalid.values())
            self.late += out.late
            for m in out.moments:
                self.moments[m["kind"]] += 1
            self.customers[key] = out.customers
            self.watermark_ms = max(self.watermark_ms, out.watermark_ms)
            self.max_ts_ms = max(self.max_ts_ms, out.max_ts_ms)

    def line(self, final: bool = False) -> str:
        """One status line: events/s (since the last line, or overall when final), lag, dead letters, moments."""
        with self._lock:
            now = time.monotonic()
            if final:
                rate = self.events / max(now - self.started, 1e-9)
            else:
                t0, n0 = self._last
                rate = (self.events - n0) / max(now - t0, 1e-9)
                self._last = (now, self.events)
            kinds = " ".join(f"{k}={v}" for k, v in sorted(self.moments.items())) or "none yet"
            lag = ""
            if self.live and self.watermark_ms:
                lag = f" watermark_lag={max(0.0, (time.time() * 1000 - self.watermark_ms) / 1000):,.0f}s"
            return (
                f"events={self.events} ({rate:,.0f}/s){lag} dead_letters={self.invalid} late={self.late} "
                f"customers={sum(self.customers.values())} moments={sum(self.moments.values())} [{kinds}]"
            )


STATS = RunStats()
