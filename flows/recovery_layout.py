"""What a recovery directory was written for, checked before Bytewax opens it.

Three changes between runs would silently mix up state: another ``--shards`` (a customer's events would meet
another shard's state, or Bytewax panics on a shard it has no route for), another file in a place of
the input list (its lines would be skipped up to the old file's position) and a rule pack with other journeys
(the restore refuses it, but only inside Bytewax, after a Rust panic). All are refused here with one line
saying what to do; Bytewax itself would only find them mid-run, if at all. Other rules are no refusal: a
snapshot records where each rule's state lives, and the restore lays new rules out after those.
"""

from __future__ import annotations

import json
import os
import pickle
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

from flows.config import ConfigError
from state.snapshots import check_blob
from state.versions import PackVersions

SHARD_STEP = "cx_moments.detect.shards"
INPUT_STEP = "cx_moments.input"
LAYOUT_FILE = "cx-layout.json"


def _latest_snapshots(directory: Path, step: str) -> dict[str, bytes]:
    """Return each state key's latest stored snapshot of ``step`` across the directory's partitions."""
    found: dict[str, tuple[int, bytes]] = {}
    for part in sorted(directory.glob("part-*.sqlite3")):
        try:
            with closing(sqlite3.connect(f"file:{part}?mode=ro", uri=True, timeout=5)) as db:
                rows = db.execute("SELECT state_key, snap_epoch, ser_change FROM snaps WHERE step_id = ?",
                                  (step,)).fetchall()
        except sqlite3.Error:
            continue  # damaged or busy: judged by the partition check, or by Bytewax
        for key, epoch, blob in rows:
            if key not in found or epoch > found[key][0]:
                found[key] = (epoch, blob)
    return {k: b for k, (_e, b) in found.items() if b is not None}


def check_shards(directory: Path, shards: int) -> None:
    """Refuse a ``--shards`` other than the one the recovery state was written with; record it on first use."""
    layout = directory / LAYOUT_FILE
    saved: int | None = None
    if layout.exists():
        try:
            saved = int(json.loads(layout.read_text())["shards"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ConfigError("--recovery-dir", f"{layout} is unreadable ({e}); restore it, or write "
                              f'{{"shards": N}} with the --shards the state was written with') from None
    keys = [int(k) for k in _latest_snapshots(directory, SHARD_STEP) if k.isdigit()]
    if saved is None and keys and max(keys) >= shards:
        saved = max(keys) + 1  # state written before the layout file: at least this many shards
        detail = f"at least --shards {saved}"
    else:
        detail = f"--shards {saved}"
    if saved is not None and saved != shards:
        raise ConfigError("--shards", f"the recovery state in {directory} was written with {detail}, this run has "
                          f"{shards}: customers would meet another shard's state. Run with the same --shards, or "
                          f"start over with an empty --recovery-dir")
    if not layout.exists():
        tmp = layout.with_name(f".{LAYOUT_FILE}.{os.getpid()}")
        tmp.write_text(json.dumps({"shards": shards}) + "\n")
        os.replace(tmp, layout)


def check_rule_pack(directory: Path, versions: PackVersions) -> None:
    """Refuse rules whose journeys differ from those the saved shards were built with (or, for a snapshot from before
    rule layouts, whose rules differ), or that cannot all be kept beside the saved ones (``state.snapshots``).

    One shard's latest snapshot tells, as every shard is written with the same rules.
    """
    for blob in _latest_snapshots(directory, SHARD_STEP).values():
        try:
            inner = pickle.loads(blob)  # noqa: S301 - our own recovery store: the shard's snapshot bytes
            if isinstance(inner, bytes):
                check_blob(inner, versions)
        except ValueError as e:
            raise ConfigError("--rules", str(e)) from None
        except Exception:  # noqa: BLE001, S112 - left to the restore, which names an unusable snapshot
            pass
        return


def check_input_files(directory: Path, paths: list[Path]) -> None:
    """Refuse to resume a file position in a place of the input list that now holds another file, or none."""
    for key, blob in _latest_snapshots(directory, INPUT_STEP).items():
        index = key.partition("-p")[0]
        if not index.isdigit():
            continue
        try:
            state: Any = pickle.loads(blob)  # noqa: S301 - our own recovery store
        except Exception:  # noqa: BLE001, S112 - left to the restore, which names an unusable snapshot
            continue
        if int(index) >= len(paths):
            # Bytewax cannot resume a partition the source no longer lists: it panics on the unknown key.
            was = f" ({state[3]!r})" if isinstance(state, tuple) and len(state) >= 4 and state[3] else ""
            raise ConfigError("--source", f"the recovery state in {directory} holds a position for place {index} "
                              f"of the input list{was}, which now has {len(paths)} file(s): list the same files "
                              f"(new ones may be added at the end), or start over with an empty --recovery-dir")
        if isinstance(state, tuple) and len(state) >= 4 and state[0] > 0:
            name = paths[int(index)].name
            if state[3] and state[3] != name:
                raise ConfigError("--source", f"the recovery state in {directory} holds line {state[0]} of "
                                  f"{state[3]!r} at place {index} of the input list, which is now {name!r}: "
                                  f"list the same files in the same order, or start over with an empty "
                                  f"--recovery-dir")
