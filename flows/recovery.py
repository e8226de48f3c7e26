"""Bytewax recovery for ``moments run --recovery-dir``: the store's partitions, their locks and checks, and
failures of the store turned into errors naming the directory."""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import pickle
import sqlite3
import tempfile
from contextlib import closing
from datetime import timedelta
from pathlib import Path

from bytewax.recovery import RecoveryConfig, init_db_dir

from connectors.replay_source import InputPositionError
from flows.config import ConfigError, PipelineConfig, RunError
from flows.operators import SnapshotRestoreError

log = logging.getLogger("cx.run")


def recovery_failure(e: BaseException, directory: Path | None) -> Exception | None:
    """Return an error naming the recovery directory and the problem for a failure of Bytewax's recovery store.

    Bytewax reports them as a Rust panic (a SQLite error without a path) or our snapshot's own exception; None
    when ``e`` is neither.
    """
    if directory is None:
        return None
    chain: list[BaseException] = []
    cur: BaseException | None = e
    while cur is not None and len(chain) < 10:
        chain.append(cur)
        cur = cur.__cause__ or cur.__context__
    for x in chain:
        if isinstance(x, InputPositionError):
            return ConfigError("--recovery-dir", f"{directory}: {x}")
        # Bytewax unpickles each stored snapshot before handing it to our restore: either may find it unusable.
        if isinstance(x, SnapshotRestoreError | pickle.UnpicklingError):
            problem = str(x) if isinstance(x, SnapshotRestoreError) else f"{type(x).__name__}: {x}"
            return ConfigError("--recovery-dir", f"{directory}: a shard snapshot cannot be restored ({problem}); "
                               f"restore the directory from a backup, or remove its part-*.sqlite3* files to start "
                               f"over without state")
    text = str(e)
    if "SqliteFailure" in text or ("database" in text.lower() and "sqlite" in text.lower()):
        problem = text.rsplit("Some(", 1)[-1].rstrip(")").strip('"') if "Some(" in text else text
        return RunError(f"recovery: writing snapshots to {directory} failed: {problem} (is the disk full or "
                        f"read-only?); free space or fix the permissions, then restart: it resumes from the last "
                        f"snapshot")
    return None


_LOCKS: dict[Path, int] = {}
"""Recovery partitions locked by this process (path -> descriptor of the lock file), held for its life."""


def _lock_partition(part: Path) -> None:
    """Take an exclusive lock on a recovery partition, beside it in ``part-<i>.lock``.

    Two processes writing one partition corrupt each other's snapshots and input positions (the second
    resumed from the first's in-flight snapshot). ``flock`` locks are released by the kernel when the
    process dies, so a SIGKILLed worker never leaves a stale lock.

    Raises:
        ConfigError: another process holds the partition (its pid, as it wrote it, is named).
    """
    lock = part.with_suffix(".lock")
    if lock in _LOCKS:
        return
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        if e.errno not in (errno.EWOULDBLOCK, errno.EACCES):
            raise ConfigError("--recovery-dir", f"cannot lock {lock}: {e.strerror}") from None
        raise ConfigError("--recovery-dir", f"{part} is in use by another process (pid {holder}): stop it, or give "
                          "this process its own --recovery-dir (or its own -i in a cluster)") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _LOCKS[lock] = fd


_BYTEWAX_TABLES = frozenset({"parts", "exs", "fronts", "commits", "snaps"})
"""The tables of a Bytewax 0.21 recovery partition (``src/recovery.rs``)."""


def _check_partitions(directory: Path) -> None:
    """Check every recovery partition in ``directory`` before Bytewax opens it.

    Bytewax reports a corrupt or truncated partition as a Rust panic without the file's name.

    Raises:
        ConfigError: naming the file and the problem, with what to do.
    """
    for part in sorted(directory.glob("part-*.sqlite3")):
        try:
            with closing(sqlite3.connect(f"file:{part}?mode=ro", uri=True, timeout=30)) as db:
                check = db.execute("PRAGMA quick_check").fetchone()
                tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
                rows = db.execute("SELECT count(*) FROM parts").fetchone() if "parts" in tables else (0,)
        except sqlite3.Error as e:
            if "locked" in str(e) or "busy" in str(e):
                continue  # another process of the cluster is writing it: in use, so not ours to judge
            problem = str(e)
        else:
            missing = sorted(_BYTEWAX_TABLES - tables)
            if check is None or check[0] != "ok":
                problem = f"integrity check failed: {check[0] if check else 'no answer'}"
            elif missing:
                problem = f"not a Bytewax recovery partition (no table {', '.join(missing)})"
            elif not rows[0]:
                problem = "not a Bytewax recovery partition (its parts table is empty)"
            else:
                continue
        raise ConfigError("--recovery-dir", f"{part} is damaged: {problem}; restore it from a backup, or remove "
                          f"{directory}'s part-*.sqlite3* files to start over without state")


def _partition_counts(directory: Path) -> dict[str, int]:
    """Return the cluster size each recovery partition in ``directory`` was created for.

    Read from Bytewax 0.21's ``parts`` table (``part_index``, ``part_count``; ``src/recovery.rs``); files that
    cannot be read are left out and left to Bytewax to judge.
    """
    counts: dict[str, int] = {}
    for part in sorted(directory.glob("part-*.sqlite3")):
        try:
            with closing(sqlite3.connect(f"file:{part}?mode=ro", uri=True, timeout=5)) as db:
                row = db.execute("SELECT part_count FROM parts").fetchone()
        except sqlite3.Error:
            continue
        if row is not None:
            counts[part.name] = int(row[0])
    return counts


def recovery_config(directory: Path, cfg: PipelineConfig) -> RecoveryConfig:
    """Return the recovery configuration, creating this process's recovery partition on its first start.

    Bytewax needs the cluster as a whole to hold every recovery partition; any one process may hold any
    subset (Bytewax 0.21 ``docs/guide/concepts/recovery.md``, "Setup"). Each worker lists the partitions
    in its own ``db_dir`` and worker 0 picks one holder per partition (``calc_primaries`` in
    ``src/timely.rs``); only that copy is read and written. So process ``i`` of ``N`` creates only
    partition ``i`` of ``N``: with one volume per process (a Kubernetes StatefulSet) each volume holds the
    one partition its process writes, and with a directory shared by the processes the set is complete
    too. Creating all ``N`` in every directory left empty copies that Bytewax may pick instead of the
    written one once the worker layout changes (``-w``): the restart then began again from the start of
    the input, or panicked.

    Args:
        directory: ``--recovery-dir``; created if missing.
        cfg: The run configuration (cluster size, this process's id, backup interval).

    Returns:
        Bytewax's recovery configuration for ``directory``.

    Raises:
        ConfigError: The directory holds partitions of a smaller cluster. A process added to it would create a
            partition of the new size, which Bytewax cannot combine with the old ones (it panics without a
            message), so this is refused here with one. Also when another process holds this process's
            partition (``_lock_partition``) or a partition is damaged (``_check_partitions``).
    """
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ConfigError("--recovery-dir", f"{directory} exists and is not a directory") from None
    except OSError as e:
        raise ConfigError("--recovery-dir", f"cannot create {directory}: {e.strerror or e}") from None
    count = max(1, len(cfg.addresses))
    # Locked before it is checked or created, so that two processes never race to create or resume it.
    _lock_partition(directory / f"part-{cfg.process_id or 0}.sqlite3")
    _check_partitions(directory)
    smaller = {name: n for name, n in _partition_counts(directory).items() if n < count}
    if smaller:
        name, n = min(smaller.items())
        raise ConfigError("--recovery-dir", f"{directory / name} belongs to a cluster of {n} process(es), this one "
                          f"has {count}: the number of processes is fixed for the life of the recovery state")
    index = cfg.process_id or 0
    own = directory / f"part-{index}.sqlite3"
    if not own.exists():
        # init_db_dir makes all `count` partitions; keep only ours. Built next to the target and renamed so a
        # process listing a shared directory never opens a half-written file (Bytewax only reads *.sqlite3
        # files directly in the directory, not this staging sub-directory).
        with tempfile.TemporaryDirectory(prefix=".init-", dir=directory) as staging:
            init_db_dir(Path(staging), count)
            os.replace(Path(staging) / own.name, own)
        log.info("created recovery partition %d of %d at %s", index, count, own)
    return RecoveryConfig(str(directory), timedelta(seconds=cfg.backup_interval_s))
