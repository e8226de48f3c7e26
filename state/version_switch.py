"""Installing new versions of the rule pack into a running shard (a ``--rules`` directory changed while running).

The versions take effect at their ``effective_from``, in event time, like those read at start-up; the shard's
state is kept: the new versions' rules are laid out after the shard's (``state.versions.RuleLayout``), so a
rule added by them starts empty and a removed one keeps its place, reacting to nothing.
What was in force up to the shard's watermark should not change (the reloader refuses that live);
when it does (a replay), every customer's wake-up is recomputed under the new versions, as after a restore.
"""

from __future__ import annotations

from state.deadlines import next_deadline
from state.shard import Shard, event_types
from state.versions import PackVersions


def install(shard: Shard, versions: PackVersions) -> bool:
    """Make ``versions`` the shard's; return whether the wake-ups had to be recomputed."""
    ctx = shard.ctx
    versions = versions.rebased(ctx.versions.layout)
    rewritten = ctx.versions.history(shard.wm) != versions.history(shard.wm)
    ctx.set_versions(versions, max(ctx.event_now, shard.wm))
    shard.types, shard.types_vary = event_types(versions)
    if rewritten:
        wheel = ctx.wheel
        for cid, c in shard.customers.items():
            c.wake = next_deadline(ctx, c)
            wheel.file(cid, c.wake)
    return rewritten
