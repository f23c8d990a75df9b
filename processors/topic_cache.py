"""Whether a topic exists, from cluster metadata cached with a TTL (reply topics are checked per request)."""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["TopicCache"]


class TopicCache:
    """Answers from the last topic list; refreshes when older than `ttl_s`, or on a miss at most every `miss_refresh_s`."""

    def __init__(
        self,
        list_topics: Callable[[], set[str]],
        ttl_s: float = 60.0,
        miss_refresh_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._list = list_topics
        self.ttl_s = ttl_s
        self.miss_refresh_s = miss_refresh_s
        self._clock = clock
        self._topics: set[str] = set()
        self._at: float | None = None

    def exists(self, topic: str) -> bool:
        now = self._clock()
        stale = self._at is None or now - self._at >= self.ttl_s
        # A topic created a moment ago: look again, but not for every request naming a missing one.
        missing = topic not in self._topics and (self._at is None or now - self._at >= self.miss_refresh_s)
        if stale or missing:
            self._topics = self._list()
            self._at = now
        return topic in self._topics
