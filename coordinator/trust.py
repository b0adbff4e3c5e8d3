"""Which answers are believed: the verification and trust rules, as pure decisions.  No sockets.

Peers are not trusted; results are deterministic, so an honest answer is known
bit for bit.  For each answer to a unit of the step under way, `Verification`
returns what to do, and the event loop does it:

  - an answer that cannot be true (non-finite, or larger than any honest result:
    `lenet.bounds`) is `Recompute`d by the coordinator itself; if its own answer
    is finite the peer lied and is `Ban`ned, and its own answer is `Accept`ed;
    if not, the model itself has diverged (`Diverged`);
  - a unit chosen for verification (a keyed fraction of each step's units) is
    held until a second peer answers it (`SecondOpinion`), or, when no other
    peer may, until the coordinator computes it (`Recompute`); two equal
    answers are accepted, and a mismatch is settled by the coordinator's own
    computation: whoever differs from it is banned;
  - any other answer is accepted.

A ban undoes the banned peer's accepted answers of this step (`convicted`).

Trust (may a suspect peer have work again?) is earned only by proof that a peer
computes: a valid, believable answer to a unit it holds in the step under way
(`Vouch` with the answer), or a late or duplicate answer to a unit it was given
in this step whose bits equal the accepted result (`aside`).  A stale result,
or one for a unit it was never given, earns nothing: anyone can replay one, and
once that let ghosts replaying a stale result stay trusted and stall a run.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar, Union

from coordinator.refusals import Reason

W = TypeVar("W", bound=Hashable)  # a peer's identity
R = TypeVar("R")  # an answer


@dataclass(frozen=True)
class Accept(Generic[W, R]):
    """`unit`'s result is `result`; `by`: the peer credited with it (None: the coordinator's own)."""

    unit: int
    result: R
    by: W | None


@dataclass(frozen=True)
class Ban(Generic[W]):
    """`who` lied: out for the run.  `reason` and `detail` say how it was caught."""

    who: W
    reason: Reason
    detail: str


@dataclass(frozen=True)
class Vouch(Generic[W]):
    """`who` has shown that it computes: it may have work again (coordinator.membership.Membership.vouch)."""

    who: W


@dataclass(frozen=True)
class Recompute:
    """The coordinator computes `unit` itself and tells `Verification.own` the answer."""

    unit: int


@dataclass(frozen=True)
class SecondOpinion(Generic[W]):
    """Give `unit` to another peer than `exclude`, whose answer awaits a check."""

    unit: int
    exclude: W


@dataclass(frozen=True)
class Diverged:
    """The coordinator's own computation of `unit` is not finite either: the model has diverged."""

    unit: int


Decision = Union[Accept, Ban, Vouch, Recompute, SecondOpinion, Diverged]


@dataclass
class _Contest(Generic[W, R]):
    """A unit the coordinator computes to settle: the answers it will judge (None: one that cannot be true)."""

    answers: list[tuple[W, R | None]]
    reason: Reason
    detail: str


@dataclass
class Verification(Generic[W, R]):
    """The answers of one step: which are accepted, held for a check, or settled by the coordinator.

    `verify`: the units whose first answer must be confirmed; `same`: whether two
    answers are bit for bit equal.
    """

    verify: set[int]
    same: Callable[[R, R], bool]
    candidates: dict[int, tuple[W, R]] = field(default_factory=dict)  # first answers awaiting a second
    contests: dict[int, _Contest[W, R]] = field(default_factory=dict)  # units awaiting the coordinator's answer
    produced: dict[int, W] = field(default_factory=dict)  # accepted units -> the peer credited
    late: dict[int, list[tuple[W, R]]] = field(default_factory=dict)  # answers too late, to compare once accepted

    def answer(self, who: W, unit: int, result: R, doubt: Reason | None, detail: str,
               checker_available: bool) -> list[Decision]:
        """A valid answer of `who` to `unit` (one it holds); `doubt`: why it cannot be true, or None.

        `checker_available`: whether a peer other than `who` may compute the unit.
        """
        if doubt is not None:
            self.contests[unit] = _Contest([(who, None)], doubt, detail)
            return [Recompute(unit)]
        vouch: list[Decision] = [Vouch(who)]
        if unit not in self.verify:
            return vouch + self._accept(unit, result, who)
        first = self.candidates.pop(unit, None)
        if first is None:
            self.candidates[unit] = (who, result)
            if checker_available:
                return vouch + [SecondOpinion(unit, exclude=who)]
            self.contests[unit] = _Contest([(who, result)], Reason.MISMATCH, detail)
            return vouch + [Recompute(unit)]
        first_by, first_result = first
        if self.same(first_result, result):
            return vouch + self._accept(unit, first_result, who)  # held by the second answerer now
        self.contests[unit] = _Contest([first, (who, result)], Reason.MISMATCH, detail)
        return vouch + [Recompute(unit)]

    def aside(self, who: W, unit: int, result: R, accepted: R | None) -> list[Decision]:
        """A believable answer of `who` to a unit it was given this step, but too late to use (another's was
        accepted, `accepted`, or the unit was taken back from it).  It earns trust if its bits prove it."""
        if accepted is None:
            self.late.setdefault(unit, []).append((who, result))  # judged when the unit is accepted
            return []
        return [Vouch(who)] if self.same(result, accepted) else []

    def no_checker(self, unit: int) -> list[Decision]:
        """Nobody but the first answerer may check `unit` any more: the coordinator computes it."""
        first = self.candidates.get(unit)
        if first is None or unit in self.contests:
            return []
        self.contests[unit] = _Contest([first], Reason.MISMATCH, "no other worker left to check it")
        return [Recompute(unit)]

    def own(self, unit: int, result: R, finite: bool) -> list[Decision]:
        """The coordinator's own answer to a unit it was asked to `Recompute`: it settles the contest."""
        contest = self.contests.pop(unit, None)
        self.candidates.pop(unit, None)
        if contest is None:
            return []
        if not finite:
            return [Diverged(unit)]
        decisions: list[Decision] = []
        credited = None
        for who, answer in contest.answers:
            if answer is not None and self.same(answer, result):
                credited = who if credited is None else credited
            else:
                decisions.append(Ban(who, contest.reason, contest.detail))
        # Agreeing with the coordinator, the first answerer still holds the unit: not a peer overtaken.
        return decisions + self._accept(unit, result, credited)

    def convicted(self, who: W) -> list[int]:
        """`who` is banned: forget its answers under check, and return its accepted units, to compute again."""
        for unit in [u for u, (w, _) in self.candidates.items() if w == who]:
            del self.candidates[unit]
        for contest in self.contests.values():
            contest.answers = [(w, a) for w, a in contest.answers if w != who]
        mine = [u for u, w in self.produced.items() if w == who]
        for unit in mine:
            del self.produced[unit]
        return mine

    def _accept(self, unit: int, result: R, by: W | None) -> list[Decision]:
        if by is not None:
            self.produced[unit] = by
        proven = [Vouch(w) for w, answer in self.late.pop(unit, []) if self.same(answer, result)]
        return [Accept(unit, result, by), *proven]
