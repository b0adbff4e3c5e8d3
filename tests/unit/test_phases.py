"""The phase timer's rules: each second counted once, inner phases taken out of outer ones."""

import pytest

from coordinator.phases import PHASES, Phases
from fakes import Clock


def test_a_phase_counts_the_time_inside_it():
    clock = Clock(0.0)
    phases = Phases(clock)
    with phases.timed("reduce"):
        clock.now += 2.0
    clock.now += 5.0  # outside any phase: not counted
    assert phases.totals["reduce"] == 2.0
    assert phases.busy() == 2.0


def test_an_inner_phase_is_not_counted_again_in_the_outer_one():
    clock = Clock(0.0)
    phases = Phases(clock)
    with phases.timed("checks"):
        clock.now += 1.0
        with phases.timed("recompute"):
            clock.now += 3.0
        clock.now += 0.5
    assert phases.totals["checks"] == 1.5
    assert phases.totals["recompute"] == 3.0
    assert phases.busy() == 4.5


def test_idle_is_not_busy_and_since_gives_the_difference():
    clock = Clock(0.0)
    phases = Phases(clock)
    with phases.timed("idle"):
        clock.now += 4.0
    before = dict(phases.totals)
    with phases.timed("send"):
        clock.now += 1.0
    assert phases.busy() == 1.0
    assert phases.since(before) == {**dict.fromkeys(PHASES, 0.0), "send": 1.0}


def test_a_phase_ended_by_an_exception_still_counts():
    clock = Clock(0.0)
    phases = Phases(clock)
    with pytest.raises(RuntimeError):
        with phases.timed("optimizer"):
            clock.now += 1.0
            raise RuntimeError("diverged")
    assert phases.totals["optimizer"] == 1.0


def test_an_unknown_phase_is_refused():
    with pytest.raises(KeyError):
        with Phases().timed("coffee"):
            pass


def test_step_times_publish_each_phase_once_and_sum_a_run_per_step():
    from coordinator.phases import StepTimes

    clock, cpu, loop_cpu = Clock(), Clock(), Clock()
    published: list[tuple[str, float]] = []
    times = StepTimes(publish=lambda phase, seconds: published.append((phase, seconds)), clock=clock, cpu=cpu,
                      thread_cpu=loop_cpu)
    for _ in range(2):  # two steps of 10 ms: 2 ms reducing, the workers waiting 3 ms between steps
        with times.timed("reduce"):
            clock.now += 0.002
        times.computed(0.006, unit=0)
        times.completed()
        clock.now += 0.003
        times.dispatched()
        cpu.now += 0.004
        loop_cpu.now += 0.003
        times.step_done(0.010)
    assert [p for p, _ in published] == ["reduce", "reduce"]  # each second published once, after its step
    assert [s for _, s in published] == pytest.approx([0.002, 0.002])
    line = times.line()
    assert line.startswith("time per step (ms): step 10.00  coordinator cpu 4.00 (loop thread 3.00  evaluation thread "
                           "0.00  other threads 1.00)  worker compute 6.00  between steps 3.00  coordinator busy 2.00: ")
    assert "reduce 2.00" in line and line.endswith("(2 steps)")


def test_the_coordinator_cpu_is_split_into_its_loop_s_the_evaluations_and_the_other_threads():
    from coordinator.phases import StepTimes

    cpu, loop_cpu = Clock(), Clock()
    cpu.now = loop_cpu.now = 7.0  # whatever the threads took before the run started is not counted
    times = StepTimes(clock=Clock(), cpu=cpu, thread_cpu=loop_cpu)
    for _ in range(4):
        loop_cpu.now += 0.002
        cpu.now += 0.0025  # the loop's and ZeroMQ's I/O thread's
        times.step_done(0.010)
    times.evaluated(0.030)  # one evaluation, told from its thread
    cpu.now += 0.030
    assert "coordinator cpu 10.00 (loop thread 2.00  evaluation thread 7.50  other threads 0.50)  " in times.line()


def test_the_critical_path_runs_from_reading_the_last_result_to_the_next_work_sent():
    from coordinator.phases import StepTimes

    clock = Clock()
    times = StepTimes(clock=clock, cpu=Clock())
    times.receiving()  # a turn that brings a result, not the last: not on the path
    with times.timed("checks"):
        clock.now += 0.004
    clock.now += 0.001  # the loop waits for the other worker
    times.receiving()
    with times.timed("receive"):
        clock.now += 0.001
    with times.timed("checks"):
        clock.now += 0.002
    times.completed()
    with times.timed("reduce"):
        clock.now += 0.003
    with times.timed("send"):
        clock.now += 0.001
    times.dispatched()
    times.step_done(0.012)
    assert times.critical == pytest.approx(0.007)
    assert times.between == pytest.approx(0.004)  # from the step's completion: decoding and checks come before
    assert {k: v for k, v in times.critical_phases.items() if v} == pytest.approx(
        {"receive": 0.001, "checks": 0.002, "reduce": 0.003, "send": 0.001})
    assert "critical path 7.00: receive 1.00  checks 2.00  recompute 0.00  reduce 3.00" in times.line()



def test_a_step_completed_by_answers_judged_early_starts_its_critical_path_at_completion():
    from coordinator.phases import StepTimes

    clock = Clock()
    times = StepTimes(clock=clock, cpu=Clock())
    clock.now += 0.005
    times.completed()  # no read brought it: its results were all in before it was under way
    with times.timed("optimizer"):
        clock.now += 0.002
    times.dispatched()
    times.dispatched()  # again, with nothing completed since: nobody waits
    assert times.critical == pytest.approx(0.002) and times.between == pytest.approx(0.002)


def _answer(times, clock, after, computing, unit):
    """`after` seconds later a turn reads an answer for `unit` whose worker says it computed `computing` s."""
    clock.now += after
    times.receiving()
    times.computed(computing, unit=unit)


def _step_before_ends(times, clock):
    """The step before ends: its last result read now, this step's work sent 2 ms later."""
    times.receiving()
    times.completed()
    clock.now += 0.002
    times.dispatched()


def test_a_synchronous_step_is_its_critical_path_a_unit_computing_its_round_trip_beyond_and_the_slowest():
    from coordinator.phases import StepTimes

    clock = Clock()
    times = StepTimes(clock=clock, cpu=Clock())
    _step_before_ends(times, clock)
    times.step_done(0.010)  # its own units went out before anything was timed: no round trip
    assert times.timed_steps == 0
    _answer(times, clock, 0.008, 0.006, unit=0)  # a unit back after 8 ms of which 6 computing
    _answer(times, clock, 0.002, 0.007, unit=32)  # the other after 10 ms, 7 computing
    times.completed()
    clock.now += 0.002  # its critical path: 2 ms
    times.dispatched()
    times.step_done(0.012)
    assert times.timed_steps == 1
    assert times.beyond_compute == pytest.approx(0.0025)  # average round trip 9 ms, average computing 6.5 ms
    assert times.slowest_lead == pytest.approx(0.001)  # the slowest: 10 ms, 1 ms over the average
    assert 0.002 + 0.0065 + times.beyond_compute + times.slowest_lead == pytest.approx(0.012)  # the step, in parts
    assert "worker compute 6.50  round trip beyond compute 2.50  waiting for the slowest 1.00  between" in times.line()


def test_a_unit_s_round_trip_is_its_first_answer_and_never_shorter_than_the_computing_claimed():
    from coordinator.phases import StepTimes

    clock = Clock()
    times = StepTimes(clock=clock, cpu=Clock())
    _step_before_ends(times, clock)
    _answer(times, clock, 0.008, 5.0, unit=0)  # a worker claiming more computing than the round trip took
    _answer(times, clock, 0.009, 0.006, unit=0)  # a second answer for the same unit: not its round trip
    times.step_done(0.020)
    assert times.timed_steps == 1
    assert times.beyond_compute == 0.0 and times.slowest_lead == 0.0


def test_a_step_whose_units_were_handed_out_again_or_that_was_given_up_is_not_timed():
    from coordinator.phases import StepTimes

    clock = Clock()
    times = StepTimes(clock=clock, cpu=Clock())
    _step_before_ends(times, clock)
    _answer(times, clock, 0.008, 0.006, unit=0)
    times.step_done(0.010, regular=False)  # a backup, a second opinion or a unit taken back
    assert times.timed_steps == 0
    _step_before_ends(times, clock)
    _answer(times, clock, 0.008, 0.006, unit=0)
    times.dropped()  # a rewind: the step is done again, its work sent anew
    _answer(times, clock, 0.050, 0.006, unit=0)
    times.step_done(0.060)
    assert times.timed_steps == 0
    assert "round trip" not in times.line()


def test_no_round_trip_is_timed_when_a_step_s_work_went_out_before_the_step_before_ended():
    from coordinator.phases import StepTimes

    clock = Clock()
    times = StepTimes(clock=clock, cpu=Clock())
    for _ in range(2):  # with a gradient delay: each step's work is out while the one before is open
        _answer(times, clock, 0.005, 0.004, unit=0)
        times.completed()
        times.dispatched(early=True)
        times.step_done(0.005)
    assert times.timed_steps == 0
    assert "round trip" not in times.line()
