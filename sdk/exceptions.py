"""`keystate.exceptions`: restate-sdk's module name for the errors, so `from restate.exceptions import ...` ports."""

from .errors import RetryableError, TerminalError

__all__ = ["RetryableError", "TerminalError"]
