"""Limits on what a flood can cost the coordinator's log and its replies.  Pure; time is passed in."""

from __future__ import annotations

from collections.abc import Hashable


class RateLimitedLog:
    """At most one log line per key per `interval` seconds, whatever the flood.

    `admit` says whether a line may be written now and, if so, how many lines of
    that key were held back since the last one, so the line can say so.
    """

    def __init__(self, interval: float = 10.0, capacity: int = 4096):
        self.interval, self.capacity = interval, capacity
        self._last: dict[Hashable, tuple[float, int]] = {}  # key -> (last written, held back since)

    def admit(self, key: Hashable, now: float) -> int | None:
        """None: hold this line back.  Else the number held back before it."""
        if key not in self._last and len(self._last) >= self.capacity:
            self._last.clear()  # keys may name peers: forget rather than grow (at worst a line more each)
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


class TokenBucket:
    """`burst` events at once, then `rate` per second: bounds what a flood of new peers costs."""

    def __init__(self, rate: float, burst: int):
        self.rate, self.burst = rate, burst
        self._tokens, self._at = float(burst), None  # full at the first event

    def take(self, now: float) -> bool:
        if self._at is not None:
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False
