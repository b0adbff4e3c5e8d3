"""Who is in the run: workers join, speak, fall under suspicion, leave, expire or are banned.  Pure.

A worker is a member from its Register until it leaves, its local process exits,
it has been silent for `heartbeat_timeout` seconds, or it is banned for the run.
A member that missed a task deadline, or was overtaken by a backup, is
*suspect*: it gets no new work until it shows that it computes (`vouch`: the
trust rules of coordinator/trust.py say what shows it), except on probation:
after `probation` seconds, doubling with each strike against it, it may have
one more unit, so a worker that hung and came back is put back to work while
a ghost costs ever less.  A heartbeat alone proves only that it is alive.  One
that misses `max_misses` deadlines in a row without ever answering is removed;
a slow worker that does answer never is.  Names are free text chosen by the peer, so they are checked
(`valid_name`) and each member gets a metric label of its own.  Time is passed
in, so tests control it.
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from typing import Generic, TypeVar

from coordinator.refusals import Reason

W = TypeVar("W", bound=Hashable)  # a worker's identity

NAME_RULE = "1-64 characters of A-Z a-z 0-9 . _ : @ -"
_NAME = re.compile(r"[A-Za-z0-9._:@-]{1,64}")


# Said to a peer whose probe differs (at most protocol.MAX_TEXT characters with the digests).
NONCONFORMING_HINT = ("another CPU kernel, BLAS or NumPy build; compare `python -m worker --self-test` on both "
                      "machines and align NumPy/OpenBLAS (and OPENBLAS_CORETYPE)")


def door_refusal(name: str, probe: str, own_probe: str, judge: str, model: str = "lenet5",
                 own_model: str = "lenet5") -> tuple[Reason, str] | None:
    """Why a peer may not join whoever judges it (the coordinator, or a relay for its workers), or None.

    A name must be safe in logs and metric labels; the peer must compute the judge's
    model (lenet.models), and its conformance probe must be bit for bit the judge's
    own (lenet.probe), or its results would change the run.
    """
    if not valid_name(name):
        return Reason.BAD_NAME, f"worker name refused: use {NAME_RULE} (--name)"
    if model != own_model:
        return Reason.WRONG_MODEL, f"it computes model {model[:40]!r}, this run trains {own_model} (--model)"
    if probe != own_probe:
        return Reason.NONCONFORMING, (f"probe {probe[:12]:.12} is not the {judge}'s {own_probe[:12]}: "
                                      + NONCONFORMING_HINT)
    return None


def valid_name(name: str) -> bool:
    """Safe in log lines and metric labels: no newlines, escapes or spaces."""
    return _NAME.fullmatch(name) is not None


@dataclass
class Member:
    name: str
    pid: int
    last_seen: float
    params_step: int = -1  # the step whose parameters it was last sent
    suspect_since: float | None = None  # missed a task deadline; no new work until it answers
    misses: int = 0  # deadlines missed since its last valid result
    strikes: int = 0  # deadlines missed or backups that overtook it, since its last valid result
    label: str = ""  # its metric label: the name, made unique if another member has it
    key: bytes | None = None  # the CURVE public key it registered with (None without CURVE)
    capacity: int = 1  # units' worth of work it takes: 1 for a worker, its workers' count for a relay
    host: str = ""  # the machine it runs on ("": unknown) and how many of that machine's members may compute
    cores: int = 1  # at once (coordinator/dispatch.py `sharing_cores`)


class Membership(Generic[W]):
    def __init__(self, heartbeat_timeout: float, max_members: int = 1024, max_misses: int = 3,
                 probation: float = 5.0, max_probation: float = 300.0):
        if not heartbeat_timeout > 0:
            raise ValueError(f"heartbeat timeout must be > 0, got {heartbeat_timeout}")
        self.heartbeat_timeout, self.max_members, self.max_misses = heartbeat_timeout, max_members, max_misses
        self.probation, self.max_probation = probation, max_probation
        self.members: dict[W, Member] = {}
        self.banned: set[W] = set()

    def __len__(self) -> int:
        return len(self.members)

    def __contains__(self, identity: W) -> bool:
        return identity in self.members

    def get(self, identity: W) -> Member | None:
        return self.members.get(identity)

    @property
    def full(self) -> bool:
        return len(self.members) >= self.max_members

    def join(self, identity: W, name: str, pid: int, now: float, tag: str = "", key: bytes | None = None,
             capacity: int = 1, host: str = "", cores: int = 1) -> bool:
        """Register `identity` (again, perhaps with another capacity); returns True if it is new.

        The caller has checked the name (`valid_name`), the ban list and `full`.
        `tag` tells apart two members of one name in their metric labels.
        """
        member = self.members.get(identity)
        if member is None:
            taken = {m.label for m in self.members.values()}
            label = name if name not in taken else f"{name}~{tag}"
            self.members[identity] = Member(name=name, pid=pid, last_seen=now, label=label, key=key,
                                            capacity=capacity, host=host, cores=cores)
            return True
        member.last_seen, member.capacity, member.host, member.cores = now, capacity, host, cores
        return False

    def touch(self, identity: W, now: float) -> Member | None:
        """A member spoke: it is alive (not more: see `vouch`).  None if it is not a member."""
        member = self.members.get(identity)
        if member is not None:
            member.last_seen = now
        return member

    def vouch(self, identity: W) -> None:
        """A member answered a task with a valid result: it computes, so it may have work again."""
        member = self.members.get(identity)
        if member is not None:
            member.suspect_since, member.misses, member.strikes = None, 0, 0

    def suspect(self, identity: W, now: float, missed: bool = True) -> bool:
        """A member missed a task deadline (`missed`), or was overtaken by a backup before it (not a miss:
        it may still answer).  True if it has now missed too many deadlines in a row to stay."""
        member = self.members.get(identity)
        if member is None:
            return False
        member.suspect_since = now
        member.misses += missed
        member.strikes += 1
        return member.misses >= self.max_misses

    def ban(self, identity: W) -> Member | None:
        """Out for the rest of the run: its messages are refused from now on."""
        self.banned.add(identity)
        return self.members.pop(identity, None)

    def remove(self, identity: W) -> Member:
        return self.members.pop(identity)

    def silent(self, now: float) -> list[tuple[W, float]]:
        """Members silent for longer than the heartbeat timeout, presumed dead: (identity, seconds silent)."""
        return [(i, now - m.last_seen) for i, m in self.members.items() if now - m.last_seen > self.heartbeat_timeout]

    def with_keys(self, keys: Iterable[bytes]) -> list[W]:
        wanted = set(keys)
        return [i for i, m in self.members.items() if m.key in wanted]

    def with_pids(self, pids: Iterable[int]) -> list[W]:
        wanted = set(pids)
        return [i for i, m in self.members.items() if m.pid in wanted]

    def on_probation(self, member: Member, now: float) -> bool:
        """A suspect whose probation has come: `probation` s after its first strike, doubling with each."""
        assert member.suspect_since is not None
        wait = min(self.max_probation, self.probation * 2 ** max(0, member.strikes - 1))
        return now - member.suspect_since >= wait

    def eligible(self, now: float) -> list[W]:
        """Members that may be given work: those not suspect or on probation; if there are none, all of them.

        A task can be lost on the way (a reconnection); a worker that never received it
        has nothing to show, and a run whose every worker is suspect must not stall.
        """
        trusted = [i for i, m in self.members.items() if m.suspect_since is None or self.on_probation(m, now)]
        return trusted or list(self.members)
