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

from collections.abc import Callable

import pytest

from attacks import ATTACKS, Run, config_of, liar_never_caught, undisturbed

pytestmark = pytest.mark.attacks


@pytest.fixture(scope="module")
def references(tmp_path_factory, mnist_dir) -> Callable[[tuple[str, ...]], Run]:
    """The undisturbed run of each configuration, made once."""
    made: dict[tuple[str, ...], Run] = {}

    def of(config: tuple[str, ...]) -> Run:
        if config not in made:
            made[config] = undisturbed(tmp_path_factory.mktemp("undisturbed"), *config)
        return made[config]
    return of


@pytest.mark.parametrize("attack", list(ATTACKS), ids=list(ATTACKS))
def test_attack_changes_nothing(attack, references, tmp_path, mnist_dir):
    reference = references(config_of(attack))
    run = ATTACKS[attack](tmp_path)
    assert run.status == 0, run.log[-3000:]
    assert run.identical_to(reference), f"{attack}: parameters differ from the undisturbed run"
    assert run.seconds <= 3 * reference.seconds + 30, (run.seconds, reference.seconds)
    assert run.peak_mb <= reference.peak_mb + 200, (run.peak_mb, reference.peak_mb)
    for check in run.checks:  # what the attack itself must have caused (refusals, bans, ...)
        assert check.holds, f"{attack}: {check.what}: {check.detail}\n{run.log[-3000:]}"


def test_a_liar_never_checked_is_never_convicted(references, tmp_path, mnist_dir):
    """Stated, not hidden: lies in units none of which is drawn for verification stay in the model."""
    run = liar_never_caught(tmp_path)
    assert run.status == 0, run.log[-3000:]
    for check in run.checks:
        assert check.holds, f"{check.what}: {check.detail}\n{run.log[-3000:]}"
    assert not run.identical_to(references(())), "the lies were expected to stay (this test documents the hole)"
