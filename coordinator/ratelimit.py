"""Limits on what a flood can cost the coordinator's log and its replies.  Pure; time is passed in."""

from __future__ import annotations

from collections.abc import Hashable


class RateLimitedLog:
    """At most one log line per key per `interval` seconds, whatever the flood.

    `admit` says whether a line may be written now and, if so, how many lines of
    that key were held back since the last one, so the line can say so.
    """

    def __init__(self, interval: float = 10.0):
        self.interval = interval
        self._last: dict[Hashable, tuple[float, int]] = {}  # key -> (last written, held back since)

    def admit(self, key: Hashable, now: float) -> int | None:
        """None: hold this line back.  Else the number held back before it."""
        last, held = self._last.get(key, (-float("inf"), 0))
        if now - last >= self.interval:
            self._last[key] = (now, 0)
            return held
        self._last[key] = (last, held + 1)
        return None


class ReplyLimiter:
    """At most one reply per peer per `interval` seconds, remembering at most `capacity` peers.

    Past capacity the memory is cleared rather than grown: a flood of new
    identities costs bounded memory, at worst one extra reply each.
    """

    def __init__(self, interval: float = 1.0, capacity: int = 4096):
        self.interval, self.capacity = interval, capacity
        self._answered: dict[Hashable, float] = {}

    def allow(self, peer: Hashable, now: float) -> bool:
        if now - self._answered.get(peer, -float("inf")) < self.interval:
            return False
        if len(self._answered) >= self.capacity:
            self._answered.clear()
        self._answered[peer] = now
        return True
