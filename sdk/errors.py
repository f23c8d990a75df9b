"""Errors of the SDK: what a handler raises to fail an invocation for good, or to retry it.

```
Exception
 ├── TerminalError            public: fails the invocation (or a ctx.run step) with {code, message};
 │                            never retried
 ├── RetryableError           public: fails this attempt only; the invocation is retried after
 │                            `retry_after` if given, else by the retry policy
 ├── ProtocolError            the processor broke the protocol (private: logged, socket closed)
 └── IdentityRejected         a request without a valid signature (private: answered 401)
BaseException
 └── AttemptEnded             the attempt is over; unwinds the handler (private)
     └── Suspended            ... because it suspended, waiting on incomplete entries
```

`AttemptEnded` derives from `BaseException` on purpose: an `except Exception` in user code must
not swallow the end of an attempt and keep running a handler whose journal is closed.
"""

from __future__ import annotations

from datetime import timedelta

__all__ = ["RetryableError", "TerminalError"]


class TerminalError(Exception):
    """Fails the invocation (or a `ctx.run` step) without retries, with an HTTP-like status code."""

    def __init__(self, message: str, status_code: int = 500) -> None:
        super().__init__(message, status_code)
        self.message = message
        self.status_code = status_code

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"TerminalError({self.message!r}, status_code={self.status_code})"


class RetryableError(Exception):
    """Fails this attempt and asks for a retry, optionally not before `retry_after`.

    Any other exception retries too (by the retry policy); raise this one to choose the delay,
    e.g. from a `Retry-After` header of a rate-limited API.
    """

    def __init__(self, message: str, retry_after: timedelta | None = None, *, status_code: int = 500) -> None:
        if retry_after is not None and retry_after < timedelta(0):
            raise ValueError(f"retry_after must not be negative, got {retry_after}")
        super().__init__(message, retry_after)
        self.message = message
        self.retry_after = retry_after
        self.status_code = status_code

    @property
    def retry_after_ms(self) -> int | None:
        return None if self.retry_after is None else self.retry_after // timedelta(milliseconds=1)

    def __str__(self) -> str:
        return self.message

    def __repr__(self) -> str:
        return f"RetryableError({self.message!r}, retry_after={self.retry_after!r})"


class ProtocolError(Exception):
    """The processor sent something the protocol does not allow at this point."""


class IdentityRejected(Exception):
    """A request without a valid keystate signature (`identity_keys`); the message is the 401 answer."""


class AttemptEnded(BaseException):
    """The attempt ended (output sent, failed, or suspended); the handler must unwind."""


class Suspended(AttemptEnded):
    """The handler waits on entries the processor has not completed yet; it resumes in a new attempt."""
