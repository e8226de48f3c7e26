"""The uplift interval and the three verdicts: numbers worked by hand, and error rates under weekly looks.

The half-width is written out again in tests/helpers.py from the published normal-mixture boundary, so a
slip in the module's arithmetic cannot hide behind itself.
"""

from __future__ import annotations

import math
import random
from statistics import NormalDist

import pytest

from flows.uplift_sequence import Uplift, half_width, still_needed, uplift, verdict
from tests.helpers import uplift_half_width

ALPHA = 0.05


# -- the interval ----------------------------------------------------------------------------


def test_interval_matches_the_boundary_worked_by_hand() -> None:
    # Arms: q_t = 30.5/101, q_c = 20.5/101 give 0.0037256; both together, q = 50.5/201 = 0.2512438, give
    # q(1-q)(1/100 + 1/100) = 0.0037624, the larger: V = 0.0037624, tau = 265.79.
    # rho² = (5.9915 + ln 6.9915) / 200 = 0.0396808, rho²·tau = 10.5468
    # half = sqrt(11.5468 / (10.5468 · 265.79) · ln(11.5468 / 0.0025)) = 0.1864317
    u = uplift(100, 30, 100, 20, 0.95, 100)
    assert u is not None
    assert (u.rate_t, u.rate_c, u.diff) == pytest.approx((0.3, 0.2, 0.1))
    assert (u.low, u.high) == pytest.approx((0.1 - 0.1864317, 0.1 + 0.1864317), abs=1e-6)
    assert u.high - u.diff == pytest.approx(uplift_half_width(100, 30, 100, 20, 0.95, 100), rel=1e-12)


def test_interval_is_wider_than_one_look_and_narrows_with_the_sample() -> None:
    z = NormalDist().inv_cdf(0.975)
    widths = []
    for n in (200, 2_000, 20_000, 200_000):
        u = uplift(n, n * 35 // 100, n, n * 30 // 100, 0.95, 200)
        assert u is not None
        wald = z * math.sqrt(0.35 * 0.65 / n + 0.3 * 0.7 / n)
        assert u.high - u.diff > wald  # paying for every look
        widths.append(u.high - u.diff)
    assert widths == sorted(widths, reverse=True)
    assert widths[-1] < 0.01


def test_lower_confidence_narrows_the_interval() -> None:
    u95, u90 = uplift(2000, 700, 2000, 600, 0.95, 200), uplift(2000, 700, 2000, 600, 0.90, 200)
    assert u95 is not None
    assert u90 is not None
    assert (u95.low, u90.low) == pytest.approx((0.05 - 0.0482767, 0.05 - 0.0444864), abs=1e-6)


def test_arms_of_all_or_nothing_keep_an_interval() -> None:
    # Wald's interval collapsed to the point 1.0 here; the arms' common rate (10.5/21) keeps it wide.
    u = uplift(10, 10, 10, 0, 0.95, 10)
    assert u is not None
    assert u.diff == 1.0
    assert (u.low, u.high) == pytest.approx((1 - 0.6786934, 1.0), abs=1e-6)


def test_uplift_is_none_when_an_arm_is_empty() -> None:
    assert uplift(0, 0, 10, 3, 0.95, 10) is None
    assert uplift(10, 3, 0, 0, 0.95, 10) is None


@pytest.mark.parametrize(
    ("args", "match"),
    [((10, 11, 10, 1), "treated"), ((10, 1, 10, -1), "control"), ((-1, 0, 10, 1), "treated"),
     ((10, 1, 5, 6), "control")],
)
def test_impossible_counts_are_rejected_naming_the_arm(args: tuple[int, int, int, int], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        uplift(*args, 0.95, 10)
    with pytest.raises(ValueError, match=match):
        still_needed(*args, 0.95, 10, 0.0)


@pytest.mark.parametrize("confidence", [0.0, 1.0, -0.5, 1.5])
def test_confidence_outside_zero_one_is_rejected(confidence: float) -> None:
    with pytest.raises(ValueError, match="confidence"):
        uplift(10, 1, 10, 1, confidence, 10)


# -- verdicts --------------------------------------------------------------------------------


def test_three_verdicts_at_the_lines() -> None:
    assert verdict(50, 50, Uplift(0.5, 0.4, 0.1, 1e-9, 0.2), 50, 0.0) == "keep"
    assert verdict(50, 50, Uplift(0.5, 0.4, 0.1, 0.0, 0.2), 50, 0.0) == "continue"  # 0 is not above 0
    assert verdict(50, 50, Uplift(0.3, 0.4, -0.1, -0.2, -1e-9), 50, 0.0) == "retire"
    assert verdict(50, 50, Uplift(0.3, 0.4, -0.1, -0.2, 0.0), 50, 0.0) == "continue"
    # Credibly positive but credibly below what the contacts must earn: retire wins.
    assert verdict(50, 50, Uplift(0.41, 0.4, 0.01, 0.004, 0.019), 50, 0.02) == "retire"
    assert verdict(50, 50, Uplift(0.41, 0.4, 0.01, 0.004, 0.02), 50, 0.02) == "keep"


def test_a_rule_up_eight_points_with_an_interval_reaching_below_zero_is_not_retired() -> None:
    # The old report said "retire" whenever the interval reached 0.
    u = uplift(400, 148, 200, 57, 0.95, 200)  # 37 % vs 28.5 %: +8.5 points
    assert u is not None
    assert u.low < 0 < u.high
    assert verdict(400, 200, u, 200, 0.01) == "continue"


def test_no_verdict_below_the_minimum_sample() -> None:
    strong = uplift(400, 200, 100, 30, 0.95, 100)
    assert verdict(400, 99, strong, 100, 0.0) == "continue"
    assert verdict(99, 400, strong, 100, 0.0) == "continue"
    assert verdict(100, 100, strong, 100, 0.0) == "keep"
    assert verdict(0, 0, None, 0, 0.0) == "continue"


def test_still_needed_is_the_sample_at_which_the_verdict_comes() -> None:
    more = still_needed(400, 148, 200, 57, 0.95, 200, 0.01)
    assert more is not None
    k_t, k_c = more
    assert k_t > 0
    assert k_c > 0
    # Arms grown by that much (2 % more: counts round) at the same rates reach a verdict; 10 % less do not.
    grown = (400 + math.ceil(1.02 * k_t), 200 + math.ceil(1.02 * k_c))
    at = uplift(grown[0], round(0.37 * grown[0]), grown[1], round(0.285 * grown[1]), 0.95, 200)
    assert verdict(*grown, at, 200, 0.01) == "keep"
    short = (400 + int(0.9 * k_t), 200 + int(0.9 * k_c))
    before = uplift(short[0], round(0.37 * short[0]), short[1], round(0.285 * short[1]), 0.95, 200)
    assert verdict(*short, before, 200, 0.01) == "continue"


def test_still_needed_has_no_answer_on_the_line() -> None:
    # No uplift and no minimum uplift: no sample can tell keep from retire.
    assert still_needed(500, 100, 500, 100, 0.95, 200, 0.0) is None
    assert still_needed(0, 0, 500, 100, 0.95, 200, 0.0) is None
    # With a minimum uplift the same arms eventually retire.
    assert still_needed(500, 100, 500, 100, 0.95, 200, 0.02) is not None


def test_half_width_is_monotone_in_information() -> None:
    widths = [half_width(1 / tau, 0.95, 200) for tau in (1, 10, 100, 1_000, 10_000, 100_000)]
    assert widths == sorted(widths, reverse=True)


# -- error rates when the report is read every week ------------------------------------------

WEEKS, SENT_PER_WEEK, CONTROL_PER_WEEK, BASE = 30, 180, 20, 0.30
MIN_SAMPLE, MIN_UPLIFT = 200, 0.01


def _binomial(rng: random.Random, n: int, p: float) -> int:
    return sum(rng.random() < p for _ in range(n))


def _weekly(true_uplift: float, trials: int, seed: int) -> tuple[dict[str, float], float]:
    """Per verdict, the share of trials in which some weekly look gave it; and Wald's share of a false keep."""
    rng = random.Random(seed)
    ever = {"keep": 0, "retire": 0}
    wald_keep = 0
    z = NormalDist().inv_cdf(1 - ALPHA / 2)
    for _ in range(trials):
        n_t = s_t = n_c = s_c = 0
        seen: set[str] = set()
        wald_said_keep = False
        for _week in range(WEEKS):
            n_t, s_t = n_t + SENT_PER_WEEK, s_t + _binomial(rng, SENT_PER_WEEK, BASE + true_uplift)
            n_c, s_c = n_c + CONTROL_PER_WEEK, s_c + _binomial(rng, CONTROL_PER_WEEK, BASE)
            seen.add(verdict(n_t, n_c, uplift(n_t, s_t, n_c, s_c, 1 - ALPHA, MIN_SAMPLE), MIN_SAMPLE, MIN_UPLIFT))
            if n_c >= MIN_SAMPLE:
                p_t, p_c = s_t / n_t, s_c / n_c
                wald_said_keep |= p_t - p_c - z * math.sqrt(p_t * (1 - p_t) / n_t + p_c * (1 - p_c) / n_c) > 0
        for v in ever:
            ever[v] += v in seen
        wald_keep += wald_said_keep
    return {v: n / trials for v, n in ever.items()}, wald_keep / trials


def test_no_uplift_is_rarely_kept_at_any_look_while_wald_is_fooled() -> None:
    rates, wald = _weekly(0.0, trials=1_000, seed=1)
    assert rates["keep"] <= ALPHA
    # Why the method matters: Wald's interval read every week keeps a useless rule far more often than 5 %.
    assert wald > 1.5 * ALPHA


def test_a_harmful_rule_is_never_kept_and_often_retired() -> None:
    rates, _ = _weekly(-0.05, trials=600, seed=2)
    assert rates["keep"] <= ALPHA
    assert rates["retire"] >= 0.3


def test_a_helpful_rule_is_rarely_retired() -> None:
    rates, _ = _weekly(0.03, trials=600, seed=3)  # above MIN_UPLIFT: retiring it is an error
    assert rates["retire"] <= ALPHA


def test_a_clearly_helpful_rule_is_kept_within_the_weeks() -> None:
    # Guards the other side: a method that never decides would pass the three tests above.
    rates, _ = _weekly(0.10, trials=300, seed=4)
    assert rates["keep"] >= 0.8
    assert rates["retire"] == 0.0


def test_the_interval_never_leaves_minus_one_to_one() -> None:
    u = uplift(3, 3, 2, 0, 0.95, 200)
    assert u is not None
    assert (u.low, u.high) == (pytest.approx(u.low), 1.0)
    assert -1.0 <= u.low < u.diff == 1.0


def test_a_small_arm_at_the_edge_does_not_make_a_verdict_on_its_own_rate() -> None:
    # 300 of 300 held-out customers succeeded, 19,800 of 20,000 contacted ones: no evidence the contact hurts
    # (an exact test puts 300 of 300 at 5 % when the true rate is 99 %).
    u = uplift(20_000, 19_800, 300, 300, 0.95, 200)
    assert u is not None
    assert u.low < 0 < u.high
    assert verdict(20_000, 300, u, 200, 0.0) == "continue"


@pytest.mark.parametrize(("rate", "sent", "control"), [(0.99, 5_000, 50), (0.01, 5_000, 50)])
def test_error_rates_hold_at_rates_near_zero_or_one_with_a_small_hold_out(rate: float, sent: int,
                                                                         control: int) -> None:
    rng = random.Random(int(rate * 100) + control)
    wrong = 0
    trials = 300
    for _ in range(trials):
        n_t = s_t = n_c = s_c = 0
        for _week in range(20):
            n_t, s_t = n_t + sent, s_t + _binomial(rng, sent, rate)
            n_c, s_c = n_c + control, s_c + _binomial(rng, control, rate)
            if verdict(n_t, n_c, uplift(n_t, s_t, n_c, s_c, 0.95, 200), 200, 0.0) != "continue":
                wrong += 1
                break
    assert wrong / trials <= ALPHA

