"""Retry with exponential backoff and full jitter; transient errors are retried, permanent ones raised."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def backoff_delay(attempt: int, base_s: float, max_s: float, rng: random.Random) -> float:
    """Return the sleep before retry ``attempt`` (1-based): uniform in [0, min(max, base·2^(attempt-1))]."""
    return rng.uniform(0.0, min(max_s, base_s * (2 ** (attempt - 1))))


def retry(
    fn: Callable[[], T],
    *,
    is_transient: Callable[[BaseException], bool],
    on_retry: Callable[[int, BaseException, float], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
    base_s: float = 0.1,
    max_s: float = 30.0,
    max_attempts: int | None = None,
    rng: random.Random | None = None,
) -> T:
    """Call ``fn`` until it succeeds, sleeping with backoff between transient failures.

    Args:
        fn: The operation.
        is_transient: Decides whether an error is worth retrying.
        on_retry: Called with (attempt, error, delay) before each sleep (metrics, logs).
        sleep: Sleep function (injectable for tests).
        base_s: First backoff cap.
        max_s: Largest backoff cap.
        max_attempts: Give up after this many attempts (None: retry transient errors forever,
            which blocks the caller: that is the back-pressure).
        rng: Random source for jitter.

    Returns:
        What ``fn`` returns.

    Raises:
        BaseException: a permanent error at once, or the last transient one after ``max_attempts``.
    """
    rng = rng or random.Random()
    attempt = 0
    while True:
        attempt += 1
        try:
            return fn()
        except Exception as e:  # noqa: BLE001 - classified below
            if not is_transient(e) or (max_attempts is not None and attempt >= max_attempts):
                raise
            delay = backoff_delay(attempt, base_s, max_s, rng)
            if on_retry is not None:
                on_retry(attempt, e, delay)
            sleep(delay)
