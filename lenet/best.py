"""`--keep-best`: the best test epoch of a run so far, and a copy of its parameters.

The best is the highest test accuracy; of equal ones the earliest epoch is kept
(later epochs only win by being better).  No I/O: the trainers save the model.
"""

from __future__ import annotations

from dataclasses import dataclass

from lenet.params import Params

RESUMABLE = ("epochs", "max_steps")  # settings a resumed run may change: the file's best is still this run's


@dataclass
class BestEpoch:
    epoch: float | None = None  # None: nothing offered yet; a fraction: a run that ended mid-epoch
    step: int = 0
    test_accuracy: float = -1.0
    params: Params | None = None

    def offer(self, epoch: float, step: int, test_accuracy: float, params: Params) -> bool:
        """Keep a copy of `params` if this epoch is better than the best so far; True if it was."""
        if self.epoch is not None and not test_accuracy > self.test_accuracy:
            return False
        self.epoch, self.step, self.test_accuracy = epoch, step, test_accuracy
        self.params = {k: v.copy() for k, v in params.items()}
        return True

    def summary(self, epochs: int) -> str:
        """What the log says about the model kept."""
        return (f"kept the parameters of epoch {self.epoch:g} (test acc {self.test_accuracy:.2%}), "
                f"the best test epoch of {epochs}")


def resumed_best(history: list[dict], saved: tuple[Params, dict] | None,
                 config: dict) -> tuple[BestEpoch, str | None]:
    """The best so far of a resumed run: its epochs are in `history`, and the model file (`saved`, written at each
    new best and at the end) holds the parameters of its best, if it holds a best of this configuration at
    least as good as every epoch in `history` (a shorter run's end, mid-epoch, may be better than its epochs).

    Returns the best and, when the file does not hold it, why: the best is then chosen among the epochs to come.
    """
    if not history:
        return BestEpoch(), None
    top = max(history, key=lambda h: h["test_accuracy"])  # max keeps the first of equals: the earliest
    if saved is None:
        return BestEpoch(), f"the model file is missing or unreadable: epoch {top['epoch']}'s parameters are lost"
    params, meta = saved
    settings = {k: v for k, v in config.items() if k not in RESUMABLE}
    made_with = meta.get("config")
    theirs = {k: v for k, v in made_with.items() if k not in RESUMABLE} if isinstance(made_with, dict) else None
    epoch, accuracy, step = meta.get("best_epoch"), meta.get("test_accuracy"), meta.get("step")
    if (theirs != settings or not isinstance(epoch, (int, float)) or not isinstance(accuracy, float)
            or not isinstance(step, int) or accuracy < top["test_accuracy"]):
        return BestEpoch(), (f"the model file does not hold this run's best epoch {top['epoch']} "
                             f"(it holds epoch {meta.get('best_epoch', meta.get('epoch'))!r})")
    return BestEpoch(epoch, step, accuracy, params), None
