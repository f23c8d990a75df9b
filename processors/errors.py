"""Errors of the processor side.

ProcessorError
 +-- InvariantViolation       the state machine found its tables inconsistent; the partition stops
(Kafka failures surface as `keystate.server.errors.KafkaUnavailable`.)
"""

from __future__ import annotations


class ProcessorError(Exception):
    """Root of every error raised by `keystate.processors`."""


class InvariantViolation(ProcessorError):
    """A table is inconsistent with a command; carries where it happened so it can be found."""
