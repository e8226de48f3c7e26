"""Thin Bytewax adapters around ``state.shard``."""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import bytewax.operators as op
from bytewax.dataflow import Stream, operator
from bytewax.operators import StatefulBatchLogic

from connectors.let_go import let_go
from flows.heap import HEAP
from flows.recent import RECENT
from flows.rule_reload import RuleReloader
from flows.shard_gate import ShardGate
from flows.shard_registry import SHARDS
from flows.stopping import note_failure, stop_for, stop_requested
from state.batches import Hello, RawBatch, Tick
from state.let_go import LetGo
from state.outputs import Outputs
from state.routing import ShardCountMismatchError
from state.shard import Shard, process
from state.version_switch import install

log = logging.getLogger(__name__)
_BOUNDARIES_LOGGED: set[int] = set()  # restart boundaries logged by this process (state.versions.RuleLayout.eras)

ShardItem = RawBatch | Tick | Hello


class ClusterSettingsError(ValueError):
    """Another process of the cluster runs with a different value of a setting that must be the same everywhere."""

    def __init__(self, setting: str, peer: int, theirs: str, ours: str, process: int) -> None:
        # Another shard count or input keeps other lines in each process; other detection settings judge alike
        # lines differently.
        harm = ("lines would be lost or counted twice" if setting in ("--shards", "--source")
                else "the processes cannot form one cluster" if setting in ("--processes", "--addresses", "-w")
                else "the same events would give different moments")
        super().__init__(f"process {peer} of the cluster runs with {setting} {theirs}, process {process} with "
                         f"{ours}: {harm}; start every process with the same {setting}")
        self.setting = setting

    @classmethod
    def from_text(cls, setting: str, text: str) -> ClusterSettingsError:
        """Rebuild an error another process found and sent (``flows.cluster_preflight``)."""
        e = cls.__new__(cls)
        ValueError.__init__(e, text)
        e.setting = setting
        return e


class ClusterSilenceError(ClusterSettingsError):
    """A peer sent this process no handshake although it read input: it sees another cluster (``--shards``/``-w``)."""

    def __init__(self, peers: list[int], process: int) -> None:
        ValueError.__init__(self, f"process(es) {', '.join(map(str, peers))} of the cluster sent process {process} no "
                            f"handshake: they run with another --shards or -w, so lines were lost or counted twice; "
                            f"start every process with the same --shards and -w")
        self.setting = "--shards"


def check_hello(hello: Hello, ours: Hello) -> None:
    """Compare a peer's handshake with this process's settings.

    Raises:
        ClusterSettingsError: naming the first setting whose values differ, and both values.
    """
    mine = dict(ours.settings)
    theirs = dict(hello.settings)
    for setting in dict.fromkeys([*mine, *theirs]):
        a, b = theirs.get(setting, "(not set)"), mine.get(setting, "(not set)")
        if a != b:
            raise ClusterSettingsError(setting, hello.process, a, b, ours.process)


class SnapshotRestoreError(Exception):
    """A shard snapshot from the recovery store could not be loaded (corrupt, or from another rule pack)."""


class ShardLogic(StatefulBatchLogic[ShardItem, Outputs, bytes | None]):
    """One shard's state inside Bytewax's ``stateful_batch``.

    Snapshots pickle the shard only when recovery is on: Bytewax asks every
    touched key for a snapshot every epoch even without recovery.
    """

    _instances = itertools.count()

    def __init__(self, shard: Shard, resume: bytes | None, recovery: bool, tick_s: float,
                 hello: Hello | None = None, expect: tuple[int, frozenset[int]] | None = None,
                 reloader: RuleReloader | None = None) -> None:
        self._hello = hello
        # A --rules directory changed while running: its versions, installed at the next batch or tick.
        self._reloader = reloader
        self._generation = 0
        # Replay cluster: (the shard every peer greets in this process, the peers); checked at the end of input.
        self._expect = expect
        self._index: int | None = None  # this key's shard number, once a batch of lines told it
        self._greeters: set[int] = set()
        # Bytewax does not tell the builder its key; a process-unique name keeps per-shard gauges apart.
        shard.key = f"s{next(ShardLogic._instances)}"
        shard.out.shard = shard.key
        self.shard = shard
        if resume is not None:
            try:
                shard.restore(resume)
            except Exception as e:  # noqa: BLE001 - any failure here means the stored snapshot is unusable
                raise SnapshotRestoreError(f"{type(e).__name__}: {e}") from e
            at = shard.rules_changed_at
            if at is not None and at not in _BOUNDARIES_LOGGED:  # once per process and time, not once per shard
                _BOUNDARIES_LOGGED.add(at)
                log.info("the rules differ from those of the recovery state's run: recorded as a version boundary at "
                         "event time %d (the restored watermark of shard %s, and of every shard restored at it); rules "
                         "absent before it stay absent for that time", at, shard.key)
        self._recovery = recovery
        # Held while a batch is applied; the HTTP thread's look-ups read a customer whole through it, between two
        # events (flows.shard_gate).
        self._gate = ShardGate()
        shard.let_go = LetGo(let_go)  # and the HTTP threads get the GIL within a few hundred events (connectors.let_go)
        self._lock = self._gate.lock
        SHARDS.add(self, self._gate)
        self._tick = timedelta(seconds=tick_s)
        self.snapshot_seconds = 0.0
        self.snapshot_bytes = 0

    def on_batch(self, values: list[ShardItem]) -> tuple[list[Outputs], bool]:
        try:
            with self._lock:
                outs, retain = self._on_batch(values)
                for out in outs:
                    RECENT.note_shed(out)  # before a look-up can see the shed customer's new record as it is
        except ShardCountMismatchError as e:  # a Kafka batch from a process with more shards
            note_failure(e)  # a peer's failure may surface first: the runner names this one
            raise
        for out in outs:
            RECENT.note(out)  # outside the lock: the look-ups' memory (flows.recent)
        HEAP.settle()
        return outs, retain

    def _reload(self) -> None:
        r = self._reloader
        if r is not None:
            if r.generation != self._generation:
                self._generation = r.generation
                install(self.shard, r.current)
            r.note_watermark(self.shard.wm)

    def _on_batch(self, values: list[ShardItem]) -> tuple[list[Outputs], bool]:
        self._reload()
        if self._expect is not None and self._index is None:
            self._index = next((v.shard for v in values if type(v) is RawBatch), None)
        if self._hello is not None and Hello in map(type, values):  # only in a cluster
            values = self._greeted(values, self._hello)
            if not values:
                return [], StatefulBatchLogic.RETAIN
        if self.shard.live:
            # Bytewax postpones notify_at while batches keep coming; apply the wall clock here too, so a
            # shard whose own event times lag (a slow partition) still releases events on time.
            for item in values:
                if type(item) is RawBatch:
                    self.shard.feed(item)
                else:
                    self.shard.tick(item)  # type: ignore[arg-type]
            self.shard.on_wall_clock()
            out = self.shard.take_outputs()
            return ([out] if out else []), StatefulBatchLogic.RETAIN
        out = process(self.shard, values)  # type: ignore[arg-type]  # hellos were taken out above
        return ([out] if out else []), StatefulBatchLogic.RETAIN

    def _greeted(self, values: list[ShardItem], ours: Hello) -> list[ShardItem]:
        """Check the cluster handshakes among ``values`` and return the rest (a hello changes no state).

        On a difference the run stops (``flows.stopping.stop_for``) rather than fails here: see there.
        """
        for item in values:
            if type(item) is Hello:
                self._greeters.add(item.process)
                try:
                    check_hello(item, ours)
                except ClusterSettingsError as e:
                    stop_for(e)
        return [item for item in values if type(item) is not Hello]

    def on_notify(self) -> tuple[list[Outputs], bool]:
        with self._lock:
            self._reload()
            self.shard.on_wall_clock()
            out = self.shard.take_outputs()
            RECENT.note_shed(out)
        RECENT.note(out)
        HEAP.settle()
        return ([out] if out else []), StatefulBatchLogic.RETAIN

    def on_eof(self) -> tuple[list[Outputs], bool]:
        # Bytewax calls this once every input partition of every process has ended; an input ended by
        # SIGTERM has not really ended, so nothing is released early.
        if not stop_requested():
            with self._lock:
                self.shard.end_of_input()
            expect = self._expect
            if expect is not None and self._index == expect[0] and expect[1] - self._greeters:
                # A peer greets this shard unless it sees other shards here: a hello it never sent cannot differ.
                ours = self._hello.process if self._hello is not None else 0
                note_failure(ClusterSilenceError(sorted(expect[1] - self._greeters), ours))
        with self._lock:
            out = self.shard.take_outputs(states=True)
            RECENT.note_shed(out)
        RECENT.note(out)
        return ([out] if out else []), StatefulBatchLogic.RETAIN

    def notify_at(self) -> datetime | None:
        if not self.shard.live:
            return None
        return datetime.now(UTC) + self._tick

    def snapshot(self) -> bytes | None:
        if not self._recovery:
            return None
        # Pending journey-state rows travel inside the snapshot (see Shard.take_outputs).
        t0 = time.perf_counter()
        blob = self.shard.snapshot()
        self.snapshot_seconds = time.perf_counter() - t0
        self.snapshot_bytes = len(blob)
        return blob


@operator
def detect(
    step_id: str,
    up: Stream[tuple[str, ShardItem]],
    make_shard: Callable[[], Shard],
    recovery: bool,
    tick_s: float = 1.0,
    hello: Hello | None = None,
    expect: tuple[int, frozenset[int]] | None = None,
    reloader: RuleReloader | None = None,
) -> Stream[tuple[str, Outputs]]:
    """Run the pure shard state machine per shard key.

    Args:
        step_id: Step id.
        up: ``(shard_key, RawBatch | Tick)`` items from a source.
        make_shard: Builds an empty shard.
        recovery: Whether snapshots are persisted.
        tick_s: Live mode: how often the wall clock advances idle shards.
        hello: This process's cluster handshake, which every ``Hello`` a shard receives must match.
        expect: Replay cluster: the shard the peers greet in this process, and the peers it must hear from.
        reloader: Watches a ``--rules`` directory; the shards install what it accepts (``flows.rule_reload``).

    Returns:
        ``(shard_key, Outputs)`` per shard batch.
    """
    return op.stateful_batch("shards", up, lambda resume: ShardLogic(make_shard(), resume, recovery, tick_s,
                                                                               hello, expect, reloader))
