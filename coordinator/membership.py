"""Who is in the run: workers join, speak, fall under suspicion, leave or expire.  Pure, no sockets.

A worker is a member from its Register until it leaves, its local process exits,
or it has been silent for `heartbeat_timeout` seconds.  A member that missed a
task deadline is *suspect*: it gets no new work until it next speaks.  Time is
passed in, so tests control it.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

W = TypeVar("W", bound=Hashable)  # a worker's identity


@dataclass
class Member:
    name: str
    pid: int
    last_seen: float
    params_step: int = -1  # the step whose parameters it was last sent
    suspect_since: float | None = None  # missed a task deadline; no new work until it speaks


class Membership(Generic[W]):
    def __init__(self, heartbeat_timeout: float):
        if not heartbeat_timeout > 0:
            raise ValueError(f"heartbeat timeout must be > 0, got {heartbeat_timeout}")
        self.heartbeat_timeout = heartbeat_timeout
        self.members: dict[W, Member] = {}

    def __len__(self) -> int:
        return len(self.members)

    def __contains__(self, identity: W) -> bool:
        return identity in self.members

    def get(self, identity: W) -> Member | None:
        return self.members.get(identity)

    def join(self, identity: W, name: str, pid: int, now: float) -> bool:
        """Register `identity` (again); returns True if it is new."""
        member = self.members.get(identity)
        if member is None:
            self.members[identity] = Member(name=name, pid=pid, last_seen=now)
            return True
        member.last_seen = now
        return False

    def touch(self, identity: W, now: float) -> Member | None:
        """A member spoke: it is alive, and no longer suspect.  None if it is not a member."""
        member = self.members.get(identity)
        if member is not None:
            member.last_seen = now
            member.suspect_since = None
        return member

    def suspect(self, identity: W, now: float) -> None:
        member = self.members.get(identity)
        if member is not None:
            member.suspect_since = now

    def remove(self, identity: W) -> Member:
        return self.members.pop(identity)

    def silent(self, now: float) -> list[tuple[W, float]]:
        """Members silent for longer than the heartbeat timeout, presumed dead: (identity, seconds silent)."""
        return [(i, now - m.last_seen) for i, m in self.members.items() if now - m.last_seen > self.heartbeat_timeout]

    def with_pids(self, pids: Iterable[int]) -> list[W]:
        wanted = set(pids)
        return [i for i, m in self.members.items() if m.pid in wanted]

    def eligible(self) -> list[W]:
        """Members that may be given work: not suspect."""
        return [i for i, m in self.members.items() if m.suspect_since is None]
