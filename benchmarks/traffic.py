"""Simulated traffic for benchmarks, cached on disk per (customers, minutes, seed)."""

from __future__ import annotations

from pathlib import Path

from benchmarks.harness import WORK


def events_file(customers: int, minutes: float, seed: int = 3) -> Path:
    """Return a JSONL file of simulated events, generating it once."""
    from connectors.simulator import simulate, write_jsonl

    WORK.mkdir(parents=True, exist_ok=True)
    path = WORK / f"events-{customers}-{int(minutes)}-{seed}.jsonl"
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        write_jsonl(simulate(customers, minutes, seed), tmp, None)
        tmp.rename(path)
    return path


def lines(path: Path, limit: int | None = None) -> list[bytes]:
    """Read raw lines (without newlines)."""
    data = path.read_bytes().splitlines()
    return data[:limit] if limit else data
