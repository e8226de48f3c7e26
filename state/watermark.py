"""A shard's event-time clock: its watermark, moved by ticks, the wall clock (live) and the end of input.

See ``state.shard`` for the semantics; this is the part of the shard that decides when time has passed.
"""

from __future__ import annotations

from collections.abc import Callable

from state.batches import Tick
from state.context import BatchContext
from state.events import Event
from state.let_go import LetGo
from state.record import CustomerState
from state.release import release, slowest_partition
from state.reorder import ReorderBuffer
from state.urgent import UrgentLane


class Watermark:
    """The watermark methods of ``state.shard.Shard`` (a base class: the shard holds the state they read)."""

    partitions: frozenset[str]
    finals: dict[str, int]
    part_max: dict[str, int]
    unheard: set[str]
    behind: set[str]
    live: bool
    lateness_ms: int
    max_ts: int
    wm: int
    held: ReorderBuffer
    ctx: BatchContext
    customers: dict[str, CustomerState]
    shortcut: bool
    lane: UrgentLane | None
    now_ms: Callable[[], int]
    _apply: Callable[[Event], None]
    let_go: LetGo | None

    def tick(self, t: Tick) -> None:
        """Follow the input's progress: note a partition's largest time, note or act on a final tick.

        Partitioned replay: the watermark moves to the smallest largest time of the expected partitions not
        yet ended, minus the lateness (nothing moves until each has reported). Live: it follows the largest
        time of any tick, but during a backlog (a partition behind or not heard from) only the slowest partition
        behind (``backlog_clock``), as a replay would. Otherwise (a replay without partitions) it follows the
        shard's own events only.
        """
        p = t.partition
        if t.final:
            if not p:
                self.flush(max(t.max_ts_ms, self.max_ts))
                return
            if t.max_ts_ms > self.finals.get(p, -1):
                self.finals[p] = t.max_ts_ms
        if self.partitions:
            if p in self.partitions:
                if t.max_ts_ms > self.part_max.get(p, -1):
                    self.part_max[p] = t.max_ts_ms
                self._follow_partitions()
            return
        if t.final or not self.live:
            return
        if p:
            self.unheard.discard(p)
            if t.max_ts_ms > self.part_max.get(p, -1):
                self.part_max[p] = t.max_ts_ms
            if t.behind:
                self.behind.add(p)
            else:
                self.behind.discard(p)
        if self.behind or self.unheard:
            clock = self.backlog_clock()
            if clock is not None:
                self.advance(clock - self.lateness_ms)
            return
        if t.max_ts_ms > self.max_ts:
            self.max_ts = t.max_ts_ms
        self.advance(self.max_ts - self.lateness_ms)

    def backlog_clock(self) -> int | None:
        """Live during a backlog: the event time read up to, the largest time of the slowest partition behind.

        None while a partition has not reported since the start (nothing is known of its backlog), as a replay
        waits for every partition; partitions caught up do not hold it back.
        """
        if self.unheard:
            return None
        return min(self.part_max.get(p, 0) for p in self.behind)

    def _follow_partitions(self) -> None:
        """Advance to the slowest open partition's largest time minus the lateness (all ended: the largest's)."""
        low = slowest_partition(self.partitions, self.part_max, self.finals)
        if low is not None:
            self.advance(low - self.lateness_ms)

    def on_wall_clock(self) -> None:
        """Live mode: advance the watermark with the wall clock while input is idle, and release urgent events.

        With a backlog (a partition behind, or one not heard from since the start) event time alone moves it: the
        wall clock would run ahead of the events still to be read, making them late and firing their customers'
        wake-ups first.
        """
        if self.live:
            if self.behind or self.unheard:
                clock = self.backlog_clock() or 0
            else:
                clock = max(self.max_ts, self.now_ms())
            self.advance(clock - self.lateness_ms)
            if self.lane is not None:
                self.lane.run(clock, self.wm)

    def end_of_input(self) -> None:
        """Every partition of every process has ended: fire what is due by the whole input's largest time.

        That is the largest time any partition's final tick reported (each validated at its source), or
        the shard's own; a live shard that heard no final tick is left to its wall clock.
        """
        if self.finals:
            self.flush(max(self.max_ts, *self.finals.values()))
        elif not self.live:
            self.flush()

    def flush(self, up_to_ms: int | None = None) -> None:
        """End of input: apply every buffered event and fire every timer due at or before ``up_to_ms``."""
        limit = self.max_ts if up_to_ms is None else up_to_ms
        # Events at `limit` must be released too, so advance one past it.
        self.advance(limit + 1, timers_to=limit)

    def advance(self, wm: int, timers_to: int | None = None) -> None:
        """Move the watermark to ``wm``: apply buffered events before it and fire timers due by it (``timers_to``
        if given; see ``state.release``)."""
        if wm <= self.wm:
            return
        self.wm = wm
        release(self.held, self.ctx, self.customers, self._apply, wm, wm if timers_to is None else timers_to,
                self.shortcut, self.let_go)
