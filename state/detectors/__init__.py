"""The moment kinds: one module each, registered here (kind → its ``Detector`` class).

Adding a kind is its module plus one line below. The order is the order the kinds' detectors meet an
event (after those that react to given types come those that see every event, then key-step ones);
a kind's bit in ``Attempt.fired`` is its position, so new kinds go at the end.
"""

from __future__ import annotations

from typing import Final

from state.detectors.abandoned import Abandoned
from state.detectors.base import Detector
from state.detectors.browse_loop import BrowseLoop
from state.detectors.channel_hop import ChannelHop
from state.detectors.failed import Failed
from state.detectors.handoff import Handoff
from state.detectors.interested import Interested
from state.detectors.maze import Maze
from state.detectors.stuck import Stuck

REGISTRY: Final[dict[str, type[Detector]]] = {
    "abandoned": Abandoned,
    "failed": Failed,
    "stuck": Stuck,
    "maze": Maze,
    "channel_hop": ChannelHop,
    "interested": Interested,
    "handoff": Handoff,
    "browse_loop": BrowseLoop,
}
KINDS: Final = tuple(REGISTRY)
KIND_BITS: Final = {k: 1 << i for i, k in enumerate(KINDS)}
