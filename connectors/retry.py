"""Retry with exponential backoff and full jitter: transient errors are retried, permanent ones raised.

Generic on purpose (no ClickHouse or Kafka import): the caller supplies the
classification of errors, so every sink shares one backoff policy.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

# 2**64 times any sane base is far above any cap; bounding the exponent keeps the float maths finite
# when a sink has been retrying for days (2.0**1024 overflows).
_MAX_EXPONENT = 64


def backoff_cap(attempt: int, base_s: float, max_s: float) -> float:
    """Return the upper bound of the sleep after failed attempt ``attempt``.

    Args:
        attempt: The 1-based number of the attempt that just failed.
        base_s: Cap after the first failure.
        max_s: Largest cap, reached after a few doublings.

    Returns:
        ``min(max_s, base_s * 2**(attempt - 1))``.
    """
    return min(max_s, base_s * 2.0 ** min(attempt - 1, _MAX_EXPONENT))


def backoff_delay(attempt: int, base_s: float, max_s: float, rng: random.Random) -> float:
    """Return the sleep after failed attempt ``attempt``: uniform in ``[0, backoff_cap(...)]`` (full jitter).

    Full jitter spreads the retries of many workers that failed together, so a
    recovering server is not hit by all of them at the same instant.

    Args:
        attempt: The 1-based number of the attempt that just failed.
        base_s: Cap after the first failure.
        max_s: Largest cap.
        rng: Random source.

    Returns:
        Seconds to sleep.
    """
    return rng.uniform(0.0, backoff_cap(attempt, base_s, max_s))


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
        fn: The operation; it must be safe to repeat after a failure.
        is_transient: Decides whether an error is worth retrying; anything else is raised at once.
        on_retry: Called as ``(attempt, error, delay)`` before each sleep (metrics, logs);
            ``attempt`` is the 1-based number of the attempt that failed.
        sleep: Sleep function (injectable for tests).
        base_s: Backoff cap after the first failure (seconds).
        max_s: Largest backoff cap (seconds).
        max_attempts: Give up after this many attempts. None retries transient errors
            forever, which blocks the caller: that is the back-pressure a sink wants.
        rng: Random source for the jitter.

    Returns:
        What ``fn`` returns.

    Raises:
        ValueError: on a non-positive ``base_s``, ``max_s`` below ``base_s`` or ``max_attempts`` < 1.
        Exception: a permanent error at once, or the last transient one after ``max_attempts``.
    """
    if base_s <= 0 or max_s < base_s:
        raise ValueError(f"backoff needs 0 < base_s <= max_s, got base_s={base_s}, max_s={max_s}")
    if max_attempts is not None and max_attempts < 1:
        raise ValueError(f"max_attempts must be at least 1 or None, got {max_attempts}")
    rng = rng or random.Random()
    attempt = 0
    while True:
        attempt += 1
        try:
            return fn()
        # Exception, not BaseException: KeyboardInterrupt and SystemExit must stop a blocked sink.
        except Exception as e:
            if not is_transient(e) or (max_attempts is not None and attempt >= max_attempts):
                raise
            delay = backoff_delay(attempt, base_s, max_s, rng)
            if on_retry is not None:
                on_retry(attempt, e, delay)
            sleep(delay)
