"""Errors of the processor side.

ProcessorError
 +-- InvariantViolation       the state machine found its tables inconsistent; the partition stops
 +-- BatchFailed              a transaction failed for no single record's fault; the session rejoins
 +-- TransactionFailed        the transactional producer refused an operation (fatal: a new producer)
 |    +-- CallAbandoned       a client call did not return within its bound; that client is abandoned
 |    +-- GroupMoved          the group rebalanced under the batch's offsets: aborted, read again
 +-- InstanceFenced           another process runs with this --instance-id; this one exits
 +-- LoopStuck                the partition loop is stuck inside a client call; the process exits
 +-- StoreFailed              a partition's local store (RocksDB) could not be opened, read or written
      +-- StoreLocked         another process holds the store open (same --instance-id/--state-dir)
(Kafka failures elsewhere surface as `keystate.server.errors.KafkaUnavailable`.)
"""

from __future__ import annotations


class ProcessorError(Exception):
    """Root of every error raised by `keystate.processors`."""


class InvariantViolation(ProcessorError):
    """A table is inconsistent with a command; carries where it happened so it can be found."""


class BatchFailed(ProcessorError):
    """A batch could not be committed and no single record is to blame."""


class TransactionFailed(ProcessorError):
    """A transactional operation failed; `fatal` means the producer is unusable, `fenced` that another took its id."""

    def __init__(self, message: str, *, fatal: bool = False, fenced: bool = False) -> None:
        super().__init__(message)
        self.fatal = fatal
        self.fenced = fenced


class CallAbandoned(TransactionFailed):
    """A client call outlived its bound on its helper thread; the client must never be used again."""

    def __init__(self, message: str, *, operation: str) -> None:
        super().__init__(message, fatal=True)
        self.operation = operation


class GroupMoved(TransactionFailed):
    """The consumer group's generation changed before the batch's offsets were committed.

    The transaction was aborted; the session reads the batch's records again (no new clients).
    """


class InstanceFenced(ProcessorError):
    """Another processor process uses the same instance id; the message says how to fix it."""


class LoopStuck(ProcessorError):
    """The partition loop did not return from a blocking client call within its bound."""


class StoreFailed(ProcessorError):
    """RocksDB refused an operation on a partition's local store; the message names the store's path."""


class StoreLocked(StoreFailed):
    """Another process (or another open in this one) holds the store's lock."""
