"""Seedable multi-channel traffic for the default rule pack, with its exact ground truth.

Each simulated customer follows one scripted scenario (happy completion,
abandonment, a failure then recovery, repeated failures, a maze of entry
points, a channel hop, a call-centre contact mid-journey, campaign interest,
plain browsing, or a deliberate rule-boundary case) plus journey-less noise.
Scenarios plant the moments they are about, but randomness (a second device, a
customer who gives up after an error) also causes incidental ones. The ground
truth is therefore not taken from the scripts: a small reference detector,
written from DESIGN.md §4 independently of ``state/``, runs over every
customer's events, so it lists exactly the moments a correct pipeline emits.

Pure standard library + orjson; no Bytewax import.
"""

from connectors.simulator.pack import DEFAULT_START_MS, KINDS
from connectors.simulator.reference import reference_moments
from connectors.simulator.scenarios import SCENARIOS
from connectors.simulator.traffic import Simulation, simulate, write_jsonl

__all__ = ["DEFAULT_START_MS", "KINDS", "SCENARIOS", "Simulation", "reference_moments", "simulate", "write_jsonl"]
