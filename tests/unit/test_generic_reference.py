"""The independent reference of the generic moment kinds agrees with the hand-computed examples.

The examples (tests/reference/generic_examples.py) were worked out by hand from DESIGN.md §8 and the issue-14
contract; the production evaluator is checked against the same table in tests/property/test_generic_kinds.py.
"""

from __future__ import annotations

import tomllib
from datetime import UTC, datetime

import pytest

from connectors.simulator.generic_reference import duration_ms, run
from tests.reference.generic_examples import CASES, MIN, T0, Case, ev, m


def test_example_names_are_unique() -> None:
    assert len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_reference_matches_hand_computed_example(case: Case) -> None:
    assert run(case.pack, case.events) == sorted(case.expected), case.clause


def test_reference_reads_the_pack_as_tomllib_gives_it() -> None:
    pack = tomllib.loads(
        """
        [pack]
        name = "t"
        version = 1
        attempt_timeout = "2h"

        [[journey]]
        id = "cart"
        steps = ["product", "cart", "checkout", "payment"]
        key_steps = ["checkout", "payment"]
        complete_type = "complete"

        [[moment]]
        kind = "count"
        name = "card_trouble"
        when = { type = "fail", "attrs.reason" = ["card", "limit"] }
        threshold = 2
        within = "1.5m"
        """
    )
    events = [
        ev("f1", 0, "fail", attrs={"reason": "card"}),
        ev("f2", MIN, "fail", attrs={"reason": "fraud"}),
        ev("f3", 90_000, "fail", attrs={"reason": "limit"}),
    ]
    assert run(pack, events) == [m("cart.card_trouble", 90_000, "f3", "f1", "f3")]


def test_reference_accepts_iso_timestamps_with_an_offset() -> None:
    pack = {"pack": {"attempt_timeout": "2h"}, "journey": [{"id": "cart", "steps": [], "key_steps": [],
                                                             "complete_type": "complete"}],
            "moment": [{"kind": "sequence", "first": {"type": "start"}, "then": {"type": "submit"}, "within": "1m"}]}
    iso = datetime.fromtimestamp((T0 + MIN) / 1000, UTC).astimezone().isoformat()
    events = [ev("s", 0, "start"), {**ev("t", 0, "submit"), "ts": iso}]
    assert run(pack, events) == [m("cart.sequence", MIN, "t", "s", "t")]


@pytest.mark.parametrize(("text", "ms"), [("250ms", 250), ("30s", 30_000), ("10m", 600_000), ("2h", 7_200_000),
                                          ("7d", 604_800_000), ("1.5m", 90_000)])
def test_durations_parse_to_milliseconds(text: str, ms: int) -> None:
    assert duration_ms(text) == ms
