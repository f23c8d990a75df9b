"""Options of a `ctx.run` step and how a failed step is retried (restate-sdk's `RunOptions`)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Generic, TypeVar

from .serde import Serde

__all__ = ["RunOptions", "StepRetry"]

T = TypeVar("T")

# Restate's defaults once any retry field of a step is set (else the invocation's policy applies).
DEFAULT_INITIAL_INTERVAL = timedelta(milliseconds=50)
DEFAULT_FACTOR = 2.0
DEFAULT_MAX_INTERVAL = timedelta(seconds=10)


@dataclass(frozen=True, slots=True)
class RunOptions(Generic[T]):
    """How a `ctx.run_typed` step is retried and serialized (the fields of restate-sdk's `RunOptions`).

    A failed step retries the invocation. `max_attempts` counts attempts of the invocation
    (the first included) and `max_duration` the time since its first attempt: once either is
    reached, the step's error is journaled as a terminal failure (code 500) that `ctx.run`
    raises as `TerminalError`. The delay before retry n (n >= 1) is
    `min(initial_retry_interval * retry_interval_factor**(n-1), max_retry_interval)`; when
    none of these three is set the invocation's retry policy decides the delay.
    `max_retry_duration` is restate-sdk's deprecated name of `max_duration`.
    """

    serde: Serde[T] | None = None
    type_hint: type[T] | None = None
    max_attempts: int | None = None
    max_duration: timedelta | None = None
    initial_retry_interval: timedelta | None = None
    max_retry_interval: timedelta | None = None
    retry_interval_factor: float | None = None
    max_retry_duration: timedelta | None = None

    def __post_init__(self) -> None:
        if self.max_attempts is not None and (isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int)
                                              or self.max_attempts < 1):
            raise ValueError(f"RunOptions.max_attempts must be a positive int or None, got {self.max_attempts!r}")
        for name in ("max_duration", "initial_retry_interval", "max_retry_interval", "max_retry_duration"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, timedelta) or value <= timedelta(0)):
                raise ValueError(f"RunOptions.{name} must be a positive timedelta or None, got {value!r}")
        factor = self.retry_interval_factor
        if factor is not None and (isinstance(factor, bool) or not isinstance(factor, (int, float)) or not factor >= 1.0):
            raise ValueError(f"RunOptions.retry_interval_factor must be a number >= 1.0 (1.0 = constant delay), got {factor!r}")
        if self.max_duration is not None and self.max_retry_duration is not None:
            raise ValueError("RunOptions: set max_duration only (max_retry_duration is its deprecated name)")

    def step_retry(self) -> StepRetry:
        return StepRetry(
            max_attempts=self.max_attempts,
            max_duration=self.max_duration if self.max_duration is not None else self.max_retry_duration,
            initial_interval=self.initial_retry_interval,
            max_interval=self.max_retry_interval,
            factor=self.retry_interval_factor,
        )


@dataclass(frozen=True, slots=True)
class StepRetry:
    """The retry settings of one step, decided from the attempt's retry count and age."""

    max_attempts: int | None = None
    max_duration: timedelta | None = None
    initial_interval: timedelta | None = None
    max_interval: timedelta | None = None
    factor: float | None = None

    def gives_up(self, retry_count: int, duration_since_first_attempt_ms: int) -> bool:
        """Whether this failure is the last one: the step then fails terminally."""
        if self.max_attempts is not None and retry_count + 1 >= self.max_attempts:
            return True
        return self.max_duration is not None and duration_since_first_attempt_ms >= self.max_duration / timedelta(milliseconds=1)

    def delay_ms(self, retry_count: int) -> int | None:
        """Milliseconds before the next attempt, or None: the invocation's retry policy decides."""
        if self.initial_interval is None and self.max_interval is None and self.factor is None:
            return None
        initial = self.initial_interval or DEFAULT_INITIAL_INTERVAL
        cap = self.max_interval or max(DEFAULT_MAX_INTERVAL, initial)
        factor = DEFAULT_FACTOR if self.factor is None else float(self.factor)
        # retry_count failures so far: this failure asks for retry number retry_count + 1.
        delay = initial * factor ** min(retry_count, 64)  # bounded: no float overflow
        return int(min(delay, cap) / timedelta(milliseconds=1))
