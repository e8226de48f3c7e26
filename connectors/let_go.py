"""A point where compiled code lets other threads of the process run.

mypyc-compiled loops never offer the GIL: a thread that wants it (an HTTP look-up, a metrics scrape, a probe)
asks after the switch interval and then waits until the worker thread next runs interpreted bytecode, which with
``state/`` compiled can be a whole source batch (≈13 ms for 4,096 lines) or a shard's batch. A call of an
interpreted function is such a point: its first instruction hands the GIL over when asked, and costs ≈50 ns
when nobody asks. ``state.shard.Shard.let_go`` and ``state.routing.split_lines`` call it every few hundred
events.
"""

from __future__ import annotations


def let_go() -> None:
    """Do nothing, in the interpreter (this module must stay uncompiled: see the module's docstring)."""
