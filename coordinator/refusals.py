"""Why the coordinator refuses a message: the one list of reasons.

Each reason is a bounded metric label (`lenet_rejected_messages_total{reason}`)
and the key of its rate-limited log line.  Every reason is exported at 0 from the
start, so a dashboard or alert sees the series before the first refusal.
"""

from __future__ import annotations

import enum
from collections.abc import Hashable, Iterable
from dataclasses import dataclass


class Reason(str, enum.Enum):
    """A refusal reason; compares equal to its label string."""

    # The frame is not a valid message (coordinator.protocol.decode).
    TOO_LARGE = "too_large"  # over the message size limit
    MALFORMED = "malformed"  # not a msgpack map, or not two frames
    VERSION = "version"  # another protocol version
    UNKNOWN_TYPE = "unknown_type"
    BAD_FIELD = "bad_field"  # a field missing, extra, or of the wrong type or range
    BAD_ARRAY = "bad_array"  # an array of the wrong dtype, shape or length
    # A valid message the sender may not send now.
    UNEXPECTED = "unexpected"  # a message type only the coordinator sends
    UNREGISTERED = "unregistered"  # from a peer that has not registered
    # A result that may not be applied (coordinator.scheduler.StepScheduler.check).
    STALE_STEP = "stale_step"
    FUTURE_STEP = "future_step"
    UNKNOWN_SHARD = "unknown_shard"  # not a unit of this step
    DUPLICATE = "duplicate"  # the unit's result is already in
    LATE = "late"  # the unit was taken back from the sender, or never given to it
    WRONG_COUNT = "wrong_count"  # a sample count other than the unit's
    NON_FINITE = "non_finite"  # NaN or Inf gradients the coordinator's own computation contradicts
    IMPLAUSIBLE = "implausible"  # gradients larger than any honest result (lenet.bounds)
    MISMATCH = "mismatch"  # a verified unit whose result differs from the coordinator's (verification)
    # A registration that is refused, or a peer that is out.
    BAD_NAME = "bad_name"  # a worker name outside membership.NAME_RULE
    NONCONFORMING = "nonconforming"  # the probe's digest differs: another kernel, BLAS or NumPy build
    WRONG_MODEL = "wrong_model"  # a peer (or parameters) of another model than the run's (lenet.models)
    FULL = "full"  # --max-workers are registered
    RATE_LIMITED = "rate_limited"  # registrations arrive faster than they are admitted
    BANNED = "banned"  # from a worker banned for the run
    # CURVE: who sent it (the User-Id of the message) is not who may.
    KEY_MISMATCH = "key_mismatch"  # a registered worker's message sent with another key than it registered with
    REVOKED_KEY = "revoked_key"  # sent with a key removed from the allow-list (SIGHUP) since its handshake
    # The coordinator failed handling a message (a bug): the message is refused, training goes on.
    INTERNAL_ERROR = "internal_error"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Streak:
    reason: Reason
    count: int
    detail: str  # the last one's


class RefusalStreaks:
    """A run that cannot progress: work given out again and again, every answer refused for the same reason.

    A member whose answers are all refused (a result too large for any message, say)
    would otherwise be re-dispatched the same unit forever.  Stuck means: since the
    last accepted result, `limit` units were taken back after their deadline, and
    every member's answers since were refused, all for one reason.  One accepted
    result clears it all; a silent member (no answer, no refusal) or one honest
    member keeps the run going, so a peer refused on purpose cannot stop a run that
    has an honest worker, and a flood of refusals without deadlines passing cannot
    either.
    """

    def __init__(self, limit: int, max_tracked: int = 4096):
        self.limit, self.max_tracked = limit, max_tracked
        # Kept while a member is removed and registers again (as a worker whose every answer is refused
        # is: it misses its deadlines), so the streak survives it; bounded, the oldest dropped first.
        self.streaks: dict[Hashable, Streak] = {}
        self.taken_back = 0  # units whose deadline passed since the last accepted result

    def refused(self, who: Hashable, reason: Reason, detail: str) -> None:
        last = self.streaks.get(who)
        count = last.count + 1 if last is not None and last.reason is reason else 1
        self.streaks.pop(who, None)
        self.streaks[who] = Streak(reason, count, detail)
        if len(self.streaks) > self.max_tracked:
            del self.streaks[next(iter(self.streaks))]

    def expired(self, units: int) -> None:
        self.taken_back += units

    def accepted(self) -> None:
        self.streaks.clear()
        self.taken_back = 0

    def stuck(self, members: Iterable[Hashable]) -> Streak | None:
        """The refusal every one of `members` (at least one) keeps getting, once `limit` units expired; or None."""
        if self.taken_back < self.limit:
            return None
        streaks = [self.streaks.get(m) for m in members]
        if not streaks or any(s is None for s in streaks) or len({s.reason for s in streaks if s}) != 1:
            return None
        return min((s for s in streaks if s is not None), key=lambda s: s.count)
