"""Run every benchmark in turn (``bash infra/dev/bench.sh``); each writes its section of RESULTS.md."""

from __future__ import annotations

import argparse
import subprocess
import sys

BENCHES = ["bench_hot_path", "bench_state_layout", "bench_replay", "bench_memory"]


def main() -> None:
    """Run the selected benchmarks (all by default)."""
    ap = argparse.ArgumentParser()
    ap.add_argument("only", nargs="*", help=f"subset of {', '.join(BENCHES)}")
    a = ap.parse_args()
    for name in a.only or BENCHES:
        print(f"== {name}", flush=True)
        subprocess.run([sys.executable, "-m", f"benchmarks.{name}"], check=True)


if __name__ == "__main__":
    main()
