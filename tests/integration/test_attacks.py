"""The attack catalogue: peers that speak the protocol and lie, stall or flood, against a real coordinator.

Every attack runs the same small training (2 honest worker processes on loopback,
the attackers beside them) and must end as an undisturbed run does: the
coordinator survives, the run finishes, the final parameters are bit-identical,
it takes at most 3x the undisturbed time plus 30 s, and the coordinator's peak
memory stays within 200 MB of the undisturbed run's.  The figures measured on
this project's machine come from `python bench/bench_attacks.py` (README, "Faults
and hostile input").
"""

from __future__ import annotations

import pytest

from attacks import ATTACKS, Run, undisturbed

pytestmark = pytest.mark.attacks


@pytest.fixture(scope="module")
def reference(tmp_path_factory, mnist_dir) -> Run:
    return undisturbed(tmp_path_factory.mktemp("undisturbed"))


@pytest.mark.parametrize("attack", list(ATTACKS), ids=list(ATTACKS))
def test_attack_changes_nothing(attack, reference, tmp_path, mnist_dir):
    run = ATTACKS[attack](tmp_path)
    assert run.status == 0, run.log[-3000:]
    assert run.identical_to(reference), f"{attack}: parameters differ from the undisturbed run"
    assert run.seconds <= 3 * reference.seconds + 30, (run.seconds, reference.seconds)
    assert run.peak_mb <= reference.peak_mb + 200, (run.peak_mb, reference.peak_mb)
    for check in run.checks:  # what the attack itself must have caused (refusals, bans, ...)
        assert check.holds, f"{attack}: {check.what}: {check.detail}\n{run.log[-3000:]}"
