"""The trust rules' decisions carried out (coordinator/verdicts.py): what is accepted is the unit's result, a
doubt is settled by the coordinator's own computation, a liar is out with its answers, or the run is rewound."""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from coordinator import protocol as P
from coordinator import trust
from coordinator.checkpoint import Checkpointer
from coordinator.epochs import Epochs
from coordinator.hub import Hub
from coordinator.liveness import Liveness
from coordinator.membership import Membership
from coordinator.metrics import Metrics
from coordinator.phases import StepTimes
from coordinator.refusals import Reason
from coordinator.rewinds import Rewinds
from coordinator.scheduler import DeadlinePolicy, RecentRate
from coordinator.step import Step
from coordinator.training import Training, TrainingDiverged
from coordinator.verdicts import Verdicts
from lenet.config import TrainConfig
from lenet.model import LeNet5
from lenet.shards import unit_sums
from fakes import Clock

log = logging.getLogger("coordinator")


class Run:
    """Members a and b; steps of two units (one each) started on demand; a hub that sends nothing here."""

    def __init__(self, mnist):
        self.training = Training(TrainConfig(epochs=2, batch_size=64, train_subset=128, seed=3), 4, mnist)
        self.members = Membership[bytes](heartbeat_timeout=30.0)
        for who in (b"a", b"b"):
            self.members.join(who, who.decode(), pid=0, now=0.0)
        self.metrics = Metrics(CollectorRegistry())
        self.step: Step | None = None
        self.hub = Hub(None, self.members, "probe", "coordinator", log,
                       lambda who: self.step.scheduler.release_worker(who), LeNet5, metrics=self.metrics)
        self.clock = Clock()
        times = StepTimes()
        self.epochs = Epochs(self.training, self.metrics, times, workers=lambda: 2, clock=self.clock)
        checkpoints = Checkpointer(None, self.metrics, None)
        self.rewinds = Rewinds(self.training, self.epochs, checkpoints, self.metrics, clock=self.clock)
        self.liveness = Liveness(self.hub, DeadlinePolicy(cap=10.0), self.metrics, stuck_after=4)
        self.turnaround = RecentRate()
        self.verdicts = Verdicts(self.hub, self.metrics, times, self.turnaround, self.liveness, self.rewinds,
                                 LeNet5, clock=self.clock)

    def start(self) -> Step:
        plan = self.training.plan(self.training.state.step, (1, 1))
        self.step = Step.start(plan, self.training.params, 10.0, self.clock(), LeNet5)
        return self.step

    def honest(self, unit: int) -> P.Result:
        """What an honest worker answers for `unit` of the step under way."""
        task = self.step.task(unit)
        model = LeNet5()
        model.params = self.step.params
        return P.result_of(task.step, unit_sums(model, task.pixels, task.labels, task.sizes, task.first,
                                                task.num_shards), 0.5)

    def answer(self, who: bytes, unit: int, result: P.Result, doubt: Reason | None = None) -> bool:
        decisions = self.step.verification.answer(who, unit, result, doubt, f"unit {unit}", True)
        return self.verdicts.carry_out(self.step, decisions)

    def finish(self) -> None:
        """Both units answered honestly by a and b, and the step applied."""
        step = self.start()
        for unit, who in enumerate((b"a", b"b")):
            step.scheduler.next_unit(who, self.clock())
            assert self.answer(who, unit, self.honest(unit))
        self.training.apply(step.results(), step.plan.units)
        self.rewinds.step_done(self.members.members)

    def counted(self, name: str) -> float:
        return self.metrics.registry.get_sample_value(name)


@pytest.fixture
def run(mnist):
    r = Run(mnist)
    yield r
    r.epochs.close()


def poisoned(result: P.Result) -> P.Result:
    return dataclasses.replace(result, grads={k: v * np.float32(1e6) for k, v in result.grads.items()})


def same(a: P.Result, b: P.Result) -> bool:
    return a.grads.keys() == b.grads.keys() and all(np.array_equal(a.grads[k], b.grads[k]) for k in a.grads)


def test_an_accepted_answer_is_the_units_result_and_the_holder_it_overtook_gets_no_new_work(run):
    step = run.start()
    step.scheduler.next_unit(b"a", 100.0)
    step.scheduler.next_unit(b"b", 100.0)
    run.clock.now = 104.0
    assert step.scheduler.backup_unit(b"b", 104.0) is None  # b holds a unit: no backup yet
    assert run.answer(b"b", 1, run.honest(1))
    assert step.scheduler.backup_unit(b"b", 104.0) == 0  # idle now: it backs up a's unit
    run.clock.now = 106.0
    assert run.answer(b"b", 0, run.honest(0))
    assert step.scheduler.complete and same(step.scheduler.results[0], run.honest(0))
    assert run.members.eligible(106.0) == [b"b"]  # a was overtaken: no new work until it answers
    assert run.turnaround.expected(1) is not None


def test_a_doubt_is_settled_by_the_coordinators_own_computation_and_the_liar_is_banned(run):
    step = run.start()
    step.scheduler.next_unit(b"a", 100.0)
    assert run.answer(b"a", 0, poisoned(run.honest(0)), doubt=Reason.IMPLAUSIBLE)
    assert same(step.scheduler.results[0], run.honest(0))  # the coordinator's own answer is accepted
    assert b"a" not in run.members and b"a" in run.members.banned
    assert run.counted("lenet_units_recomputed_locally_total") == 1 and run.counted("lenet_workers_banned_total") == 1


def test_a_ban_discards_the_liars_answers_of_this_step_to_be_computed_again(run):
    step = run.start()
    step.scheduler.next_unit(b"a", 100.0)
    assert run.answer(b"a", 0, run.honest(0))
    assert 0 in step.scheduler.results
    ban = trust.Ban(b"a", Reason.MISMATCH, "shards 0-1")
    assert run.verdicts.carry_out(step, [ban])
    assert 0 not in step.scheduler.results and 0 in step.scheduler.pending
    assert run.counted("lenet_verify_mismatches_total") == 1 and b"a" not in run.members
    assert run.verdicts.carry_out(step, [ban])  # banned once: nothing more happens
    assert run.counted("lenet_workers_banned_total") == 1


def test_a_liar_with_answers_accepted_in_an_earlier_step_rewinds_the_run_and_the_rest_is_moot(run):
    run.finish()  # a's and b's answers accepted in step 0
    step = run.start()
    assert not run.verdicts.carry_out(step, [trust.Ban(b"a", Reason.MISMATCH, "shards 0-1"),
                                             trust.Accept(1, run.honest(1), b"b")])
    assert run.training.state.step == 0 and run.counted("lenet_rewinds_total") == 1
    assert step.scheduler.results == {}  # decided for the dropped step: not carried out


def test_a_coordinators_own_computation_that_is_not_finite_either_stops_the_run(run):
    step = run.start()
    with pytest.raises(TrainingDiverged, match="shards 2-3 is not finite either"):
        run.verdicts.carry_out(step, [trust.Diverged(1)])


def test_a_second_opinion_keeps_the_first_answerer_from_the_unit_and_a_vouch_restores_a_suspect(run):
    step = run.start()
    run.members.suspect(b"b", 100.0)
    assert run.verdicts.carry_out(step, [trust.SecondOpinion(0, exclude=b"a"), trust.Vouch(b"b")])
    assert step.scheduler.excluded == {0: b"a"}
    assert run.members.eligible(100.0) == [b"a", b"b"]


def alone_answers(run: Run, unit: int, result: P.Result) -> bool:
    """`a`'s answer to `unit` when no other member may check it (what the loop tells the rules then)."""
    decisions = run.step.verification.answer(b"a", unit, result, None, f"unit {unit}", False)
    return run.verdicts.carry_out(run.step, decisions)


def test_a_verified_unit_nobody_else_can_check_is_computed_here_ahead_once_and_settles_its_answer(run):
    step = run.start()
    step.verification.verify.update({0, 1})
    step.scheduler.next_unit(b"a", 100.0)
    run.verdicts.prepare(step)  # while a computes
    assert run.counted("lenet_units_recomputed_locally_total") == 2
    assert alone_answers(run, 0, run.honest(0))
    assert same(step.scheduler.results[0], run.honest(0)) and b"a" in run.members
    run.verdicts.prepare(step)  # asked again each turn: unit 1 is computed already, unit 0 accepted
    assert run.counted("lenet_units_recomputed_locally_total") == 2
    assert alone_answers(run, 1, poisoned(run.honest(1)))  # a lie, judged against the answer computed ahead
    assert b"a" in run.members.banned and same(step.scheduler.results[1], run.honest(1))  # the coordinator's own
    assert 0 not in step.scheduler.results  # the liar's earlier answer of the step: computed again
    assert run.counted("lenet_units_recomputed_locally_total") == 2  # nothing computed twice


def test_a_unit_already_accepted_or_not_chosen_for_verification_is_not_computed_ahead(run):
    step = run.start()
    step.verification.verify.add(1)
    step.scheduler.next_unit(b"a", 100.0)
    step.scheduler.accept(step.plan.units[1][0], run.honest(1), by=b"b")
    run.verdicts.prepare(step)
    assert run.counted("lenet_units_recomputed_locally_total") == 0 and step.own == {}
