"""Retry with exponential backoff and full jitter, driven by plain callables and a fake sleep."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from connectors.retry import backoff_cap, backoff_delay, retry


class TransientError(Exception):
    """An error the tests classify as worth retrying."""


class PermanentError(Exception):
    """An error the tests classify as final."""


def is_transient(exc: BaseException) -> bool:
    """Classify the test errors."""
    return isinstance(exc, TransientError)


def failing(times: int, error: Exception | None = None, result: str = "ok") -> tuple[Callable[[], str], list[int]]:
    """Return a function failing ``times`` times before returning ``result``, and its call log."""
    calls: list[int] = []

    def fn() -> str:
        calls.append(1)
        if len(calls) <= times:
            raise error if error is not None else TransientError(f"failure {len(calls)}")
        return result

    return fn, calls


class MaxRandom(random.Random):
    """Jitter that always picks the top of the range, to observe the caps."""

    def uniform(self, a: float, b: float) -> float:  # noqa: D102
        return b


def test_retry_returns_the_result_after_transient_failures() -> None:
    fn, calls = failing(3)
    sleeps: list[float] = []
    assert retry(fn, is_transient=is_transient, sleep=sleeps.append) == "ok"
    assert len(calls) == 4
    assert len(sleeps) == 3


def test_retry_does_not_sleep_when_the_first_call_succeeds() -> None:
    sleeps: list[float] = []
    assert retry(lambda: 42, is_transient=is_transient, sleep=sleeps.append) == 42
    assert sleeps == []


def test_backoff_doubles_until_capped() -> None:
    fn, _ = failing(10)
    sleeps: list[float] = []
    retry(fn, is_transient=is_transient, sleep=sleeps.append, base_s=0.1, max_s=2.0, rng=MaxRandom())
    assert sleeps == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.6, 2.0, 2.0, 2.0, 2.0, 2.0])


def test_jitter_stays_within_zero_and_the_cap() -> None:
    fn, _ = failing(200)
    sleeps: list[float] = []
    retry(fn, is_transient=is_transient, sleep=sleeps.append, base_s=0.5, max_s=8.0, rng=random.Random(7))
    for attempt, delay in enumerate(sleeps, start=1):
        assert 0.0 <= delay <= backoff_cap(attempt, 0.5, 8.0)
    # Full jitter: the delays are spread over the range, not pinned to the cap.
    capped = sleeps[5:]
    assert min(capped) < 2.0 < 6.0 < max(capped)


def test_permanent_error_is_raised_at_once() -> None:
    fn, calls = failing(5, PermanentError("bad request"))
    sleeps: list[float] = []
    retried: list[int] = []
    with pytest.raises(PermanentError, match="bad request"):
        retry(fn, is_transient=is_transient, sleep=sleeps.append, on_retry=lambda a, e, d: retried.append(a))
    assert len(calls) == 1
    assert sleeps == []
    assert retried == []


def test_permanent_error_after_transient_ones_stops_the_retries() -> None:
    errors = iter([TransientError("1"), TransientError("2"), PermanentError("3")])

    def fn() -> None:
        raise next(errors)

    sleeps: list[float] = []
    with pytest.raises(PermanentError, match="3"):
        retry(fn, is_transient=is_transient, sleep=sleeps.append)
    assert len(sleeps) == 2


def test_on_retry_gets_attempt_error_and_the_delay_that_is_slept() -> None:
    fn, _ = failing(3)
    sleeps: list[float] = []
    seen: list[tuple[int, str, float]] = []
    retry(fn, is_transient=is_transient, sleep=sleeps.append, rng=random.Random(1),
          on_retry=lambda attempt, exc, delay: seen.append((attempt, str(exc), delay)))
    assert [(a, e) for a, e, _ in seen] == [(1, "failure 1"), (2, "failure 2"), (3, "failure 3")]
    assert [d for _, _, d in seen] == sleeps


def test_max_attempts_raises_the_last_transient_error() -> None:
    fn, calls = failing(10)
    sleeps: list[float] = []
    with pytest.raises(TransientError, match="failure 3"):
        retry(fn, is_transient=is_transient, sleep=sleeps.append, max_attempts=3)
    assert len(calls) == 3
    assert len(sleeps) == 2


def test_max_attempts_of_one_never_sleeps() -> None:
    fn, _ = failing(1)
    sleeps: list[float] = []
    with pytest.raises(TransientError):
        retry(fn, is_transient=is_transient, sleep=sleeps.append, max_attempts=1)
    assert sleeps == []


def test_keyboard_interrupt_is_not_retried() -> None:
    def fn() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        retry(fn, is_transient=lambda e: True, sleep=lambda s: None)


def test_backoff_stays_finite_after_thousands_of_attempts() -> None:
    # A sink blocked for hours reaches attempt numbers where 2.0**n would overflow.
    assert backoff_cap(5000, 0.1, 30.0) == 30.0
    assert 0.0 <= backoff_delay(10_000, 0.1, 30.0, random.Random(3)) <= 30.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"base_s": 0.0}, "base_s"),
        ({"base_s": 2.0, "max_s": 1.0}, "base_s"),
        ({"max_attempts": 0}, "max_attempts"),
    ],
)
def test_invalid_backoff_settings_are_rejected(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        retry(lambda: None, is_transient=is_transient, **kwargs)  # type: ignore[arg-type]
