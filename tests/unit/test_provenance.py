"""The rewind rules (coordinator/provenance.py): who is credited, which state a conviction goes back to."""

from __future__ import annotations

import pytest

from coordinator.provenance import Provenance, Rewind


def state_at(step: int):
    return lambda: f"state@{step}"


def credit(p: Provenance, who: str, *steps: int) -> None:
    for step in steps:
        p.accepted(who, step, state_at(step))


def test_a_liar_convicted_later_rewinds_to_before_its_first_accepted_answer():
    p = Provenance()
    credit(p, "liar", 3, 4, 5)
    assert p.convicted("liar", 9) == Rewind(3, "state@3")


def test_a_liar_whose_answers_were_all_in_the_step_under_way_needs_no_rewind():
    p = Provenance()
    credit(p, "liar", 7)
    assert p.convicted("liar", 7) is None
    assert p.snapshots == {}


def test_a_member_never_accepted_needs_no_rewind():
    assert Provenance().convicted("stranger", 5) is None


def test_the_snapshot_is_taken_once_per_step_and_shared_by_members_that_joined_together():
    p = Provenance()
    taken = []
    for who in ("a", "b"):
        p.accepted(who, 2, lambda: taken.append(2) or "state@2")
    p.accepted("a", 3, lambda: taken.append(3) or "state@3")  # not a first answer: nothing taken
    assert taken == [2]
    assert p.convicted("b", 6) == Rewind(2, "state@2")


def test_after_a_rewind_later_snapshots_and_credits_are_forgotten_and_earlier_ones_kept():
    p = Provenance()
    credit(p, "old", 1)
    credit(p, "liar", 4)
    credit(p, "new", 6)
    assert p.convicted("liar", 8) == Rewind(4, "state@4")
    assert set(p.snapshots) == {1}  # 6 held the lie; 4 is nobody's any more
    assert "new" not in p.credits and "old" in p.credits
    credit(p, "new", 5)  # replayed: credited afresh
    assert p.convicted("new", 7) == Rewind(5, "state@5")


def test_members_gone_are_forgotten_once_their_step_is_over():
    p = Provenance()
    credit(p, "left", 2)
    credit(p, "stays", 3)
    p.retain({"stays"})
    assert set(p.snapshots) == {3}
    assert p.convicted("left", 5) is None


def test_a_clean_record_clears_nothing():
    p = Provenance()
    credit(p, "liar", 0, *range(1, 50))
    assert p.convicted("liar", 60) == Rewind(0, "state@0")


def test_memory_is_bounded_by_falling_back_on_an_older_snapshot():
    p = Provenance(limit=3)
    for i, step in enumerate((0, 10, 11, 30)):
        credit(p, f"m{i}", step)
    assert len(p.snapshots) == 3
    assert 0 in p.snapshots  # the oldest always stays
    assert p.convicted("m2", 40) == Rewind(10, "state@10")  # 11 was nearest its neighbour: falls back on 10


def test_the_limit_must_allow_a_snapshot():
    with pytest.raises(ValueError):
        Provenance(limit=0)
