"""The trust rules (coordinator/trust.py), one rule per test: answers in, decisions out."""

from coordinator.refusals import Reason
from coordinator.trust import Accept, Ban, Diverged, Recompute, SecondOpinion, Verification, Vouch


def same(a: str, b: str) -> bool:
    return a == b


def judge(*verify: int) -> Verification[str, str]:
    return Verification(set(verify), same)


def test_an_answer_to_an_unverified_unit_is_accepted_and_vouches_for_its_sender():
    v = judge()
    assert v.answer("a", 0, "x", None, "step 0", checker_available=True) == [Vouch("a"), Accept(0, "x", "a")]
    assert v.produced == {0: "a"}


def test_an_answer_that_cannot_be_true_is_computed_here_and_a_finite_answer_convicts_its_sender():
    v = judge()
    assert v.answer("a", 0, "poison", Reason.IMPLAUSIBLE, "step 0", checker_available=True) == [Recompute(0)]
    assert v.own(0, "x", finite=True) == [Ban("a", Reason.IMPLAUSIBLE, "step 0"), Accept(0, "x", None)]


def test_when_the_coordinators_own_answer_is_not_finite_either_the_model_has_diverged():
    v = judge()
    v.answer("a", 0, "nan", Reason.NON_FINITE, "step 0", checker_available=True)
    assert v.own(0, "nan", finite=False) == [Diverged(0)]


def test_a_verified_units_first_answer_waits_for_a_second_from_another_peer():
    v = judge(0)
    assert v.answer("a", 0, "x", None, "step 0", checker_available=True) == [Vouch("a"), SecondOpinion(0, "a")]
    assert v.produced == {}  # nothing accepted yet
    assert v.answer("b", 0, "x", None, "step 0", checker_available=True) == [Vouch("b"), Accept(0, "x", "b")]


def test_two_answers_that_differ_are_settled_by_the_coordinator_and_whoever_differs_from_it_is_banned():
    v = judge(0)
    v.answer("a", 0, "x", None, "step 0", checker_available=True)
    assert v.answer("b", 0, "lie", None, "step 0", checker_available=True) == [Vouch("b"), Recompute(0)]
    assert v.own(0, "x", finite=True) == [Ban("b", Reason.MISMATCH, "step 0"), Accept(0, "x", "a")]


def test_a_verified_unit_nobody_else_may_check_is_computed_by_the_coordinator():
    v = judge(0)
    assert v.answer("a", 0, "x", None, "step 0", checker_available=False) == [Vouch("a"), Recompute(0)]
    assert v.own(0, "x", finite=True) == [Accept(0, "x", "a")]  # agreeing: a keeps the credit


def test_a_first_answer_left_without_a_checker_later_is_computed_by_the_coordinator_once():
    v = judge(0)
    v.answer("a", 0, "lie", None, "step 0", checker_available=True)
    assert v.no_checker(0) == [Recompute(0)]
    assert v.no_checker(0) == []  # already being settled
    assert v.own(0, "x", finite=True) == [Ban("a", Reason.MISMATCH, "no other worker left to check it"),
                                          Accept(0, "x", None)]


def test_a_conviction_hands_back_the_convicts_accepted_units_and_drops_its_answers_under_check():
    v = judge(1)
    v.answer("a", 0, "x", None, "step 0", checker_available=True)
    v.answer("a", 1, "y", None, "step 0", checker_available=True)  # awaits a second opinion
    v.answer("b", 2, "z", None, "step 0", checker_available=True)
    assert v.convicted("a") == [0]
    assert v.produced == {2: "b"} and 1 not in v.candidates
    assert v.answer("b", 1, "y", None, "step 0", checker_available=True) == [Vouch("b"), SecondOpinion(1, "b")]


def test_a_late_answer_earns_trust_only_if_its_bits_equal_the_accepted_result():
    v = judge()
    assert v.aside("slow", 0, "x", accepted=None) == []  # judged once the unit is accepted
    assert v.aside("ghost", 0, "zeros", accepted=None) == []
    assert v.answer("b", 0, "x", None, "step 0", checker_available=True) == [Vouch("b"), Accept(0, "x", "b"),
                                                                              Vouch("slow")]


def test_a_duplicate_answer_earns_trust_only_if_its_bits_equal_the_accepted_result():
    v = judge()
    assert v.aside("overtaken", 0, "x", accepted="x") == [Vouch("overtaken")]
    assert v.aside("ghost", 0, "zeros", accepted="x") == []
