"""Topic names under one configurable prefix, and the processor tables kept in the changelog."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CHANGELOG_TABLES", "Topics"]

# The processor tables. All of them share one compacted changelog topic (`Topics.changelog_topic`)
# whose keys start with the table name; partition i of it belongs to partition i of the log.
# Adding a table is compatible; renaming one loses its state.
CHANGELOG_TABLES: tuple[str, ...] = (
    "status",
    "journal",
    "state",
    "inbox",
    "objects",
    "timers",
    "promises",
    "idempotency",
)


@dataclass(frozen=True, slots=True)
class Topics:
    """The names of keystate's topics; every name starts with `prefix` (default `keystate.`)."""

    prefix: str = "keystate."

    @property
    def log(self) -> str:
        return f"{self.prefix}log"

    @property
    def requests(self) -> str:
        return f"{self.prefix}requests"

    @property
    def requests_dlq(self) -> str:
        return f"{self.prefix}requests.dlq"

    @property
    def results(self) -> str:
        return f"{self.prefix}results"

    @property
    def replies_prefix(self) -> str:
        """The start of every ingress's own reply topic (`replies(ingress_id)`)."""
        return f"{self.prefix}replies."

    def replies(self, ingress_id: str) -> str:
        """The reply topic of one ingress instance: QueryOutputReplies and the results it waits for.

        One partition, created by the ingress at start and kept across restarts; an hour's retention.
        """
        return f"{self.replies_prefix}{ingress_id}"

    @property
    def meta(self) -> str:
        return f"{self.prefix}meta"

    @property
    def changelog_topic(self) -> str:
        """The one compacted changelog of every processor table (keys `["<table>", ...]`)."""
        return f"{self.prefix}changelog"

    def changelog(self, table: str) -> str:
        """The per-table changelog topic of keystate before 0.2 (only read to migrate or refuse)."""
        if table not in CHANGELOG_TABLES:
            raise ValueError(f"unknown table {table!r}; tables are {', '.join(CHANGELOG_TABLES)}")
        return f"{self.prefix}{table}-changelog"

    @property
    def changelogs(self) -> tuple[str, ...]:
        return tuple(self.changelog(t) for t in CHANGELOG_TABLES)
