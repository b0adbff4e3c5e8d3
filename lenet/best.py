"""`--keep-best`: the best test epoch of a run so far, and a copy of its parameters.

The best is the highest test accuracy; of equal ones the earliest epoch is kept
(later epochs only win by being better).  No I/O: the trainers save the model.
"""

from __future__ import annotations

from dataclasses import dataclass

from lenet.params import Params


@dataclass
class BestEpoch:
    epoch: int | None = None  # None: no epoch offered yet
    step: int = 0
    test_accuracy: float = -1.0
    params: Params | None = None

    def offer(self, epoch: int, step: int, test_accuracy: float, params: Params) -> bool:
        """Keep a copy of `params` if this epoch is better than the best so far; True if it was."""
        if self.epoch is not None and not test_accuracy > self.test_accuracy:
            return False
        self.epoch, self.step, self.test_accuracy = epoch, step, test_accuracy
        self.params = {k: v.copy() for k, v in params.items()}
        return True

    def summary(self, epochs: int) -> str:
        """What the log says about the model kept."""
        return (f"kept the parameters of epoch {self.epoch} (test acc {self.test_accuracy:.2%}), "
                f"the best test epoch of {epochs}")
