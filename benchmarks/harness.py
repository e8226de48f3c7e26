"""Shared benchmark plumbing: repeated runs, medians, and the RESULTS.md sections they write."""

from __future__ import annotations

import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "RESULTS.md"
WORK = Path(__file__).resolve().parent / ".work"


@dataclass(frozen=True)
class Figure:
    """Median and range of one measured rate over several runs."""

    name: str
    values: tuple[float, ...]
    unit: str = "events/s"

    @property
    def median(self) -> float:
        """Median of the runs."""
        return statistics.median(self.values)

    def row(self) -> str:
        """A Markdown table row."""
        f = ".2f" if self.unit == "×" else ",.0f"
        return (f"| {self.name} | {self.median:{f}} | {min(self.values):{f}}–{max(self.values):{f}} "
                f"| {len(self.values)} | {self.unit} |")


def rate(n: int, fn: Callable[[], object]) -> float:
    """Run ``fn`` once and return n per second of wall time."""
    t0 = time.perf_counter()
    fn()
    return n / (time.perf_counter() - t0)


def machine() -> str:
    """One line describing the machine and versions."""
    import importlib.metadata as md

    def v(p: str) -> str:
        try:
            return md.version(p)
        except md.PackageNotFoundError:
            return "-"

    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{time.strftime('%Y-%m-%d', time.gmtime())}; {platform.machine()} {cpu}; {os.cpu_count()} cores; "
            f"Python {platform.python_version()}; bytewax {v('bytewax')}; orjson {v('orjson')}; "
            f"chdb {v('chdb')}; clickhouse-connect {v('clickhouse-connect')}; confluent-kafka {v('confluent-kafka')}")


def write_section(name: str, body: str) -> None:
    """Replace (or append) the section ``name`` of RESULTS.md with ``body``."""
    text = RESULTS.read_text() if RESULTS.exists() else "# Benchmark results\n"
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{body.rstrip()}\n{end}"
    if start in text:
        text = re.sub(re.escape(start) + r".*?" + re.escape(end), lambda _m: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    RESULTS.write_text(text)


def table(figures: list[Figure]) -> str:
    """Markdown table of figures."""
    head = "| what | median | min–max | runs | unit |\n|---|---:|---:|---:|---|"
    return "\n".join([head, *(f.row() for f in figures)])


def run_cli(args: list[str], env: dict[str, str] | None = None, timeout: float = 1800) -> float:
    """Run ``moments …`` in a subprocess and return its wall time in seconds."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "flows.cli", *args], check=True, env={**os.environ, **(env or {})},
                   timeout=timeout, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0
