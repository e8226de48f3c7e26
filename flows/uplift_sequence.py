"""Uplift of sent over hold-out with an interval that stays valid however often it is looked at.

Operators read ``moments report rules`` every week and act on the first verdict they see. A
fixed-sample interval (Wald's) checked every week is wrong far more often than its level says: with a
true uplift of 0, twenty weekly looks at 95 % call a rule "credibly better" in roughly one run in seven
(``tests/unit/test_uplift_sequence.py`` measures it). So the report uses a confidence *sequence*: an
interval ``[low, high]`` that contains the true uplift at every look at once with probability at least
``confidence``, whatever the number of looks and whenever one stops.

Method: the two-sided normal-mixture boundary (Robbins 1970; Howard, Ramdas, McAuliffe and Sekhon 2021)
applied, as in the asymptotic confidence sequences of Waudby-Smith, Arbour, Sinha, Kennedy and Ramdas
(2024), to the difference of the two success rates. With ``V`` the estimated variance of that
difference and ``τ = 1/V`` the information gathered so far, the half-width is

    sqrt((1 + ρ²τ) / (ρ²τ²) · ln((1 + ρ²τ) / α²)),     α = 1 − confidence,

which shrinks like ``sqrt(ln τ / τ)``. ``ρ`` sets where the sequence is tightest; it is tuned for the
information of ``min_sample`` moments per arm at a 50 % success rate, the point from which a verdict is
allowed. The variance uses each rate shrunk by half a success (``(s + ½) / (n + 1)``), so that an arm of
all successes or all failures does not collapse the interval to a point, Wald's weakness at the edges.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final, Literal

Verdict = Literal["keep", "retire", "continue"]

# The largest multiple of today's sample that `still_needed` considers before it gives up.
_MAX_GROWTH: Final = 1e6


@dataclass(frozen=True, slots=True)
class Uplift:
    """Success rates of both arms and the difference with its confidence-sequence interval.

    Attributes:
        rate_t: Success rate of the treated (sent) arm.
        rate_c: Success rate of the control arm.
        diff: ``rate_t - rate_c``.
        low: Lower bound of the interval.
        high: Upper bound of the interval.
    """

    rate_t: float
    rate_c: float
    diff: float
    low: float
    high: float


def _check(n_t: int, s_t: int, n_c: int, s_c: int, confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be between 0 and 1 (exclusive), got {confidence!r}")
    for arm, n, s in (("treated", n_t, s_t), ("control", n_c, s_c)):
        if n < 0 or not 0 <= s <= n:
            raise ValueError(f"{arm}: need 0 <= successes <= moments, got {s} of {n}")


def _variance(n_t: int, s_t: int, n_c: int, s_c: int) -> float:
    q_t, q_c = (s_t + 0.5) / (n_t + 1), (s_c + 0.5) / (n_c + 1)
    # Near 0 or 1 a small arm's own rate understates its variance (300 successes of 300 say nothing about a 1 %
    # failure rate): the rate of both arms together, what an uplift of 0 would give each, bounds it from below.
    q = (s_t + s_c + 0.5) / (n_t + n_c + 1)
    return max(q_t * (1 - q_t) / n_t + q_c * (1 - q_c) / n_c, q * (1 - q) * (1 / n_t + 1 / n_c))


def _rho2(confidence: float, min_sample: int) -> float:
    # Tightest near the information of min_sample moments per arm at p = 1/2: V = 1/(2·min_sample).
    a2 = -2.0 * math.log(1.0 - confidence)
    return (a2 + math.log(a2 + 1.0)) / (2.0 * max(min_sample, 1))


def half_width(variance: float, confidence: float, min_sample: int) -> float:
    """Half-width of the confidence sequence for an estimate of this variance.

    Args:
        variance: Estimated variance of the uplift (> 0).
        confidence: Confidence level, strictly between 0 and 1.
        min_sample: Moments per arm at which the sequence is tuned to be tightest.

    Returns:
        The half-width.
    """
    tau = 1.0 / variance
    r = _rho2(confidence, min_sample) * tau
    alpha = 1.0 - confidence
    return math.sqrt((1.0 + r) / (r * tau) * math.log((1.0 + r) / (alpha * alpha)))


def uplift(n_t: int, s_t: int, n_c: int, s_c: int, confidence: float, min_sample: int) -> Uplift | None:
    """The difference of the two success rates with its always-valid interval.

    Args:
        n_t: Treated (sent) moments.
        s_t: Successful treated moments.
        n_c: Control moments.
        s_c: Successful control moments.
        confidence: Confidence level, strictly between 0 and 1.
        min_sample: Moments per arm from which a verdict is allowed (tunes the sequence).

    Returns:
        The rates, difference and interval; None when either arm has no moments.

    Raises:
        ValueError: for negative counts, more successes than moments or a confidence outside (0, 1).
    """
    _check(n_t, s_t, n_c, s_c, confidence)
    if n_t == 0 or n_c == 0:
        return None
    p_t, p_c = s_t / n_t, s_c / n_c
    diff = p_t - p_c
    half = half_width(_variance(n_t, s_t, n_c, s_c), confidence, min_sample)
    # A difference of two rates lies in [-1, 1]: an interval wider than that says no more.
    return Uplift(rate_t=p_t, rate_c=p_c, diff=diff, low=max(diff - half, -1.0), high=min(diff + half, 1.0))


def verdict(n_t: int, n_c: int, effect: Uplift | None, min_sample: int, min_uplift: float) -> Verdict:
    """Decide whether a rule earns its contacts.

    Args:
        n_t: Treated (sent) moments.
        n_c: Control moments.
        effect: The rule's uplift (None when an arm is empty).
        min_sample: Moments each arm needs before any verdict.
        min_uplift: The smallest uplift worth the contacts (a fraction; 0 = any positive uplift).

    Returns:
        ``retire`` when the interval lies below ``min_uplift`` (or below 0), ``keep`` when it lies above 0
        (and does not lie below ``min_uplift``), otherwise ``continue``; ``continue`` too while an arm is
        below ``min_sample``.
    """
    if effect is None or n_t < min_sample or n_c < min_sample:
        return "continue"
    if effect.high < max(min_uplift, 0.0):
        return "retire"
    return "keep" if effect.low > 0.0 else "continue"


def still_needed(n_t: int, s_t: int, n_c: int, s_c: int, confidence: float, min_sample: int,
                 min_uplift: float) -> tuple[int, int] | None:
    """Moments per arm still needed for a verdict if the rates stay as they are and the arms keep their ratio.

    Args:
        n_t: Treated (sent) moments.
        s_t: Successful treated moments.
        n_c: Control moments.
        s_c: Successful control moments.
        confidence: Confidence level.
        min_sample: Moments each arm needs before any verdict.
        min_uplift: The smallest uplift worth the contacts.

    Returns:
        (more sent, more control); None when no sample would decide (the uplift sits exactly on the
        line between keep and retire, or an arm is empty and its rate unknown).
    """
    _check(n_t, s_t, n_c, s_c, confidence)
    if n_t == 0 or n_c == 0:
        return None
    diff = s_t / n_t - s_c / n_c
    # A verdict comes when the half-width drops below the distance to the nearer decision line.
    gap = max(diff, max(min_uplift, 0.0) - diff)
    if gap <= 0.0:
        return None
    r_t, r_c = s_t / n_t, s_c / n_c

    def decided(k: float) -> bool:
        m_t, m_c = round(k * n_t), round(k * n_c)
        return half_width(_variance(m_t, round(r_t * m_t), m_c, round(r_c * m_c)), confidence, min_sample) < gap

    lo, hi = 1.0, 1.0
    while not decided(hi):
        lo, hi = hi, hi * 2.0
        if hi > _MAX_GROWTH:
            return None
    while hi - lo > 1e-3 * lo:
        mid = (lo + hi) / 2.0
        lo, hi = (lo, mid) if decided(mid) else (mid, hi)
    return (max(math.ceil(hi * n_t) - n_t, min_sample - n_t, 0),
            max(math.ceil(hi * n_c) - n_c, min_sample - n_c, 0))
