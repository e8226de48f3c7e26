"""Picking up a changed ``--rules`` directory while running: validated first, then installed in every shard.

A thread of each process reads the directory every ``POLL_S`` seconds. When its files changed (a file added,
edited or removed), the whole directory is loaded and checked as at start-up, then against what runs: the
journeys must stay the same, and live, no version may change what was in force up to the process's watermark
(history is not rewritten). A refused directory changes nothing: the versions in force stay, each problem is
logged with its file and field, and ``cx_rule_pack_reload_total{result}`` counts it. Accepted versions are
published with a new generation; each shard installs them at its next batch or wall-clock tick
(``flows.operators.ShardLogic``) and switches at their ``effective_from`` in event time.

A replay (``--clock replay``) reads the directory once, at start: its moments depend on its input and that
directory only, whenever the files change while it runs. A later change is refused there (``result="replay"``)
and applies at the next run.

Each process of a cluster reads its own copy of the directory (a ConfigMap volume per pod): processes that
install a version at different wall times still switch at the same event time as long as the watermark has
not reached ``effective_from``. So that every process decides alike, a live change is judged against the wall
clock, which the processes share, not against each process's own watermark (a process behind on a backlog
would accept what the others refuse, and the cluster would run two rule sets): a version added, changed or
removed must come into force at least ``MARGIN_MS`` after the wall clock at which the process reads it (and,
as before, after its watermark). Processes still decide apart when the file reaches them at wall times that
straddle ``effective_from - MARGIN_MS``; ``cx_rule_pack_versions_info{fingerprint}`` shows each process's
versions in force, and the alert ``CxRulePackSplit`` fires when they differ.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Final

from state.rule_model import RulePack, RulePackError
from state.rules import MAX_PACK_BYTES
from state.shard import wall_ms
from state.versions import PackVersions, RuleLayout, is_pack_name, journeys_fingerprint, load_versions

log = logging.getLogger("cx.rules")

POLL_S: Final = 2.0
MARGIN_MS: Final = 10_000  # live: how far ahead of the wall clock a change must come into force
APPLIED: Final = "applied"
INVALID: Final = "invalid"
TOO_LATE: Final = "too_late"
REPLAY: Final = "replay"
UNCHANGED: Final = "unchanged"
RESULTS: Final = (APPLIED, INVALID, TOO_LATE, REPLAY, UNCHANGED)


def directory_state(directory: Path) -> tuple[tuple[str, str], ...]:
    """(name, content hash) of each pack file of the directory: what a change is judged by."""
    out: list[tuple[str, str]] = []
    for f in sorted(directory.iterdir()):
        if not is_pack_name(f.name):  # as load_versions: V2.TOML is a pack file too, .#v1.toml (hidden) is not
            continue
        if not f.is_file():  # a directory, FIFO or broken link: loading refuses it, so it is a change (never read)
            out.append((f.name, "(not a regular file)"))
            continue
        try:
            st = f.stat()
            if st.st_size > MAX_PACK_BYTES:  # refused by loading: not read (nor hashed) at every poll
                out.append((f.name, f"(too large: {st.st_size} bytes, {st.st_mtime_ns})"))
                continue
            out.append((f.name, hashlib.blake2b(f.read_bytes(), digest_size=8).hexdigest()))
        except OSError:
            out.append((f.name, "(unreadable)"))  # loading it names the problem
    return tuple(out)


class RuleReloader:
    """Watches a ``--rules`` directory; ``current`` and ``generation`` are what the shards install.

    Args:
        directory: The ``--rules`` directory.
        versions: The versions loaded at start-up.
        live: Live mode: refuse a change to what was in force up to the watermark. Replay: refuse every change.
        on_result: Called with the result of each change judged (``RESULTS``), e.g. to count it.
        clock: The wall clock (epoch ms) a live change is judged against.
    """

    def __init__(self, directory: Path, versions: PackVersions, live: bool,
                 on_result: Callable[[str], None] | None = None, clock: Callable[[], int] = wall_ms) -> None:
        self.directory = directory
        self._clock = clock
        self.current = versions
        self.generation = 0
        self.live = live
        self._on_result = on_result
        self._seen = directory_state(directory)
        self._unreadable: str | None = None  # why the directory could not be read at the last poll (logged once)
        self._watermark = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def note_watermark(self, wm: int) -> None:
        """A shard's watermark after a batch: the process's is the largest (the furthest a shard has gone)."""
        if wm > self._watermark:
            self._watermark = wm

    def check(self) -> str | None:
        """Judge the directory once; return the result (``RESULTS``), None when nothing changed."""
        try:
            now = directory_state(self.directory)
        except OSError as e:
            why = str(e.strerror or e)
            if why != self._unreadable:  # once, not at every poll (every 2 s) while it stays so
                log.error("rule pack reload: %s: (directory): cannot be read: %s; the versions in force stay, and "
                          "this is logged again only when it changes", self.directory, why)
                self._unreadable = why
            return None
        if self._unreadable is not None:
            self._unreadable = None
            log.info("rule pack reload: %s: (directory): can be read again", self.directory)
        if now == self._seen:
            return None
        self._seen = now
        result = self._judge()
        if self._on_result is not None:
            self._on_result(result)
        return result

    def _judge(self) -> str:
        if not self.live:
            log.error("rule pack reload refused, the versions in force stay: %s: a replay (--clock replay) reads the "
                      "--rules directory once, at start, so that its moments depend on its input only; the change "
                      "applies at the next run", self.directory)
            return REPLAY
        try:
            new = load_versions(self.directory)
        except RulePackError as e:
            for line in str(e).splitlines():
                log.error("rule pack reload refused, the versions in force stay: %s", line)
            return INVALID
        if _keys(new) == _keys(self.current):
            # A refused file removed, or a file touched: the versions in force are those of the directory again.
            log.info("rule pack directory %s changed; its versions are those in force: nothing to apply",
                     self.directory)
            return UNCHANGED
        problems = [(new.latest, "moment", pr) for pr in RuleLayout.of(new.packs, self.current.layout).problems()]
        if journeys_fingerprint(new.packs[0]) != journeys_fingerprint(self.current.packs[0]):
            problems.append((new.packs[0], "journey", "changes the journeys: a running worker may change rules, not "
                             "journeys; restart with a fresh --recovery-dir to change them"))
        for p, where, problem in problems:
            log.error("rule pack reload refused, the versions in force stay: %s: %s: %s", p.path, where, problem)
        if problems:
            return INVALID
        wm, now = self._watermark, self._clock()
        # Judged against the wall clock (shared by the processes) plus the margin; the watermark only when it is
        # ahead of that (events from the future), so that history is never rewritten.
        limit = max(wm, now + MARGIN_MS - 1)
        if new.history(limit) != self.current.history(limit):
            known = _keys(self.current)
            changed = [q for q in new.packs if _key(q) not in known]
            where = changed[0].path if changed else f"{self.directory} (a version in force was removed)"
            edited = [q for q in changed if (q.effective_from_ms or 0) <= limit and any(
                o.version == q.version and o.effective_from_ms == q.effective_from_ms for o in self.current.packs)]
            if edited:
                log.error("rule pack reload refused, the versions in force stay: %s: (file): edits version %d, in "
                          "force up to the wall clock plus %d s (its rules, types or contact policy): a version in "
                          "force is not changed, so that history is not rewritten; put the change in a new version "
                          "with an effective_from at least %d s ahead", edited[0].path, edited[0].version,
                          MARGIN_MS // 1000, MARGIN_MS // 1000)
                return TOO_LATE
            log.error("rule pack reload refused, the versions in force stay: %s: pack.effective_from: lies before "
                      "the wall clock plus %d s (%d; watermark %d): every process of a cluster judges a change by "
                      "the wall clock, so that all decide alike, and history is not rewritten; give an "
                      "effective_from at least %d s ahead of the time the file reaches every process", where,
                      MARGIN_MS // 1000, now + MARGIN_MS, wm, MARGIN_MS // 1000)
            return TOO_LATE
        with self._lock:
            self.current = new
            self.generation += 1
        log.info("rule pack reloaded from %s: %s", self.directory, new.describe())
        return APPLIED

    def start(self, poll_s: float = POLL_S) -> None:
        """Poll the directory in a daemon thread until ``stop``."""
        def loop() -> None:
            while not self._stop.wait(poll_s):
                try:
                    self.check()
                except Exception:  # a reload must never stop the worker
                    log.exception("rule pack reload failed; the versions in force stay")

        self._thread = threading.Thread(target=loop, name="cx-rule-reload", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop polling."""
        self._stop.set()


def _key(q: RulePack) -> tuple[int, int | None, str]:
    """What tells a version apart: its number, effective_from and everything it decides."""
    return q.version, q.effective_from_ms, q.full_fingerprint()


def _keys(v: PackVersions) -> set[tuple[int, int | None, str]]:
    """The ``_key`` of each of ``v``'s versions: equal sets, the same versions."""
    return {_key(q) for q in v.packs}
