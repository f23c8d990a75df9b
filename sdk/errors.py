"""Errors of the SDK; what a handler raises to fail an invocation for good.

```
TerminalError                 root of the public errors: fails the invocation (or a ctx.run step)
                              with {code, message}; never retried
Exception
 └── ProtocolError            the processor broke the protocol (private: logged, socket closed)
BaseException
 └── AttemptEnded             the attempt is over; unwinds the handler (private)
     └── Suspended            ... because it suspended, waiting on incomplete entries
```

`AttemptEnded` derives from `BaseException` on purpose: an `except Exception` in user code must
not swallow the end of an attempt and keep running a handler whose journal is closed.
"""

from __future__ import annotations

__all__ = ["TerminalError"]


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


class ProtocolError(Exception):
    """The processor sent something the protocol does not allow at this point."""


class AttemptEnded(BaseException):
    """The attempt ended (output sent, failed, or suspended); the handler must unwind."""


class Suspended(AttemptEnded):
    """The handler waits on entries the processor has not completed yet; it resumes in a new attempt."""
