"""The run's numbers: parameters, optimizer, learning-rate schedule, epoch statistics.  No sockets.

`Training` owns everything a run's result depends on: the configuration, the shard
count, the training data, the model and its optimizer.  It plans each step's work
(`plan`), applies a finished step (`apply`: the units' sums added up the rest of
the fixed tree and the linear layers' factors multiplied out, divided by the
batch size, one optimizer step at `schedule(step)`)
and closes epochs (`close_epoch`, then `record_epoch` with the test accuracy of the
epoch's parameters, which the coordinator computes while the next epoch trains).  What a
checkpoint must restore is `state` plus the parameters and optimizer state, and with
`--gradient-delay 1` the parameters before the last update, `lagged`, which the next
step's gradient is computed with (coordinator/checkpoint.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

import numpy as np

from coordinator import protocol as P
from coordinator.step import StepPlan, plan_step
from lenet.config import TrainConfig, make_optimizer, make_schedule
from lenet.data import MNIST, epoch_batches, steps_per_epoch, training_subset
from lenet.models import get_model
from lenet.params import Params
from lenet.reduction import Node
from lenet.shards import mean_gradient, summed_loss
from lenet.train import EpochStats, evaluate


class TrainingDiverged(Exception):
    """The model itself has diverged, as the coordinator's own computation confirms."""


@dataclass
class RunState:
    """Everything a checkpoint must restore apart from parameters and optimizer; the rest is derived."""

    step: int = 0  # optimizer steps done
    epoch_loss_sum: float = 0.0
    epoch_correct: int = 0
    epoch_samples: int = 0
    history: list[dict] = field(default_factory=list)


@dataclass(frozen=True)
class Snapshot:
    """The run's state at the start of a step, to go back to (coordinator/provenance.py): a copy."""

    params: Params
    optimizer: dict[str, np.ndarray]
    state: RunState
    lagged: Params | None = None  # with a gradient delay: `Training.lagged`


@dataclass(frozen=True)
class StepReport:
    """What one applied step did, for metrics and the progress line."""

    step: int  # steps done, this one included
    total_steps: int
    steps_per_epoch: int
    epochs: int
    loss: float  # mean cross-entropy of the step's batch
    samples: int
    lr: float

    @property
    def epoch_ended(self) -> bool:
        return self.step % self.steps_per_epoch == 0


@dataclass(frozen=True)
class ClosedEpoch:
    """An epoch whose steps are all applied, waiting for its test accuracy (computed off the loop)."""

    epoch: int  # 1-based
    steps: int  # steps done at its end
    samples: int
    loss: float
    train_accuracy: float
    seconds: float
    params: Params  # a copy of the parameters at its end: what the test accuracy is measured on
    timed_samples: int  # the samples trained in `seconds` (after a resume mid-epoch, fewer than `samples`)


class Training:
    def __init__(self, config: TrainConfig, num_shards: int, data: MNIST):
        if num_shards < 1:
            raise ValueError(f"shards must be >= 1, got {num_shards}")
        self.config, self.num_shards = config, num_shards
        self.data = training_subset(data, config.train_subset)
        self.model = get_model(config.model)(seed=config.seed)
        self.optimizer = make_optimizer(config, self.model.params)
        self.n_train = len(self.data.train_labels)
        self.steps_per_epoch = steps_per_epoch(self.n_train, config.batch_size)
        self.total_steps = config.epochs * self.steps_per_epoch
        if config.max_steps is not None:
            self.total_steps = min(self.total_steps, config.max_steps)
        self.schedule = make_schedule(config, self.steps_per_epoch)
        self.state = RunState()
        self.untimed_samples = 0  # of the running epoch, trained before a resume: not in the epoch's samples/s
        # Told of each recorded epoch (its history entry, its parameters): the run log and --keep-best.
        self.on_epoch: Callable[[dict, Params], None] = lambda record, params: None
        self._batches: tuple[int, list[np.ndarray]] = (-1, [])  # one epoch's batches, cached
        self._next_plan: StepPlan | None = None  # built while the workers compute the step under way
        self.wire_offset = 0  # added to step numbers on the wire: grows at each rewind (coordinator/step.py)
        self._highest_wire = -1  # of every plan made: the steps done again after a rewind are numbered above it
        # --gradient-delay 1: the parameters the next step's gradient is computed with, those before the last
        # update (None until the first update, and always without a delay: the parameters as they are).
        self.lagged: Params | None = None

    @property
    def params(self) -> Params:
        return self.model.params

    @property
    def gradient_params(self) -> Params:
        """The parameters the next step's gradient is computed with: the current ones, or with a gradient
        delay those before the last update."""
        return self.lagged if self.lagged is not None else self.model.params

    @property
    def pipelined(self) -> bool:
        """True with a gradient delay: the step after next may be handed out before this one is applied (its
        parameters, the current ones, are known)."""
        return self.config.gradient_delay > 0

    @property
    def done(self) -> bool:
        return self.state.step >= self.total_steps

    @property
    def epoch_unclosed(self) -> bool:
        """At an epoch's last step with its sums not yet closed (a checkpoint is written just then)."""
        return self.state.step % self.steps_per_epoch == 0 and self.state.epoch_samples > 0

    @property
    def epoch(self) -> int:
        """The epoch under way, 1-based (the last one once the run is done)."""
        return min(self.state.step // self.steps_per_epoch + 1, self.config.epochs)

    def plan(self, step: int, capacities: tuple[int, ...]) -> StepPlan:
        """Shards, units and encoded tasks of `step` for members of `capacities`: independent of the parameters."""
        ahead = self._next_plan
        if ahead is not None and ahead.step == step and ahead.wire == step + self.wire_offset \
                and ahead.capacities == capacities:
            return ahead
        return self._plan(step, capacities)

    def plan_ahead(self, capacities: tuple[int, ...], step: int | None = None) -> None:
        """Build `step`'s plan now (default: the step after the one under way), off the critical path (kept if
        members change meanwhile: `plan` then builds it again)."""
        nxt = self.state.step + 1 if step is None else step
        if nxt < self.total_steps and (self._next_plan is None or self._next_plan.step != nxt):
            self._next_plan = self._plan(nxt, capacities)

    def _plan(self, step: int, capacities: tuple[int, ...]) -> StepPlan:
        epoch, index = divmod(step, self.steps_per_epoch)
        if self._batches[0] != epoch:
            self._batches = (epoch, epoch_batches(self.config.seed, epoch, self.n_train, self.config.batch_size))
        self._highest_wire = max(self._highest_wire, step + self.wire_offset)
        return plan_step(step, self._batches[1][index], self.num_shards, capacities,
                         self.data.train_images, self.data.train_labels, wire=step + self.wire_offset,
                         model=type(self.model))

    def gradient(self, results: Mapping[Node, P.Result], units: list[Node]) -> Params:
        """A finished step's mean gradient: its units' results added up the rest of the tree."""
        return mean_gradient(results, units[-1][1], sum(results[unit].count for unit in units))

    def apply(self, results: Mapping[Node, P.Result], units: list[Node], grads: Params | None = None) -> StepReport:
        """Step the optimizer with the step's mean gradient (`gradient`, computed here unless given)."""
        ordered = [results[unit] for unit in units]
        n = sum(r.count for r in ordered)
        if grads is None:
            grads = self.gradient(results, units)
        lr = self.schedule(self.state.step)
        before = ({k: v.copy() for k, v in self.model.params.items()}, self.optimizer.state_dict())
        self.optimizer.step(self.model.params, grads, lr)
        if not all(np.isfinite(v).all() for v in self.model.params.values()):
            self.model.params = before[0]  # never keep (or checkpoint) non-finite parameters
            self.optimizer.load_state_dict(before[1])
            raise TrainingDiverged(f"step {self.state.step}: the update would make parameters non-finite")
        if self.pipelined:
            self.lagged = before[0]  # the next step's gradient is computed with the parameters before this update
        loss_sum = summed_loss(ordered)
        st = self.state
        st.step += 1
        st.epoch_loss_sum += loss_sum
        st.epoch_correct += sum(r.correct for r in ordered)
        st.epoch_samples += n
        return StepReport(step=st.step, total_steps=self.total_steps, steps_per_epoch=self.steps_per_epoch,
                          epochs=self.config.epochs, loss=loss_sum / n, samples=n, lr=lr)

    def snapshot(self) -> Snapshot:
        """A copy of everything the rest of the run depends on (taken only when a rewind may need it)."""
        return Snapshot({k: v.copy() for k, v in self.model.params.items()}, self.optimizer.state_dict(),
                        replace(self.state, history=[dict(e) for e in self.state.history]),
                        None if self.lagged is None else {k: v.copy() for k, v in self.lagged.items()})

    def rewind(self, snapshot: Snapshot) -> None:
        """Back to `snapshot` from the step under way: the steps after it are done again (the snapshot stays
        as it was), numbered on the wire above every step sent so far."""
        # Above every step planned, and so sent: the one under way and, with a gradient delay, the next one,
        # already out.  A member holding a number again would not be sent its parameters again.
        self.wire_offset = self._highest_wire + 1 - snapshot.state.step
        self.model.params = {k: v.copy() for k, v in snapshot.params.items()}
        self.optimizer.load_state_dict(snapshot.optimizer)
        self.lagged = None if snapshot.lagged is None else {k: v.copy() for k, v in snapshot.lagged.items()}
        self.state = replace(snapshot.state, history=[dict(e) for e in snapshot.state.history])

    def close_epoch(self, seconds: float) -> ClosedEpoch:
        """End the epoch's sums (the next epoch starts from zero); its test accuracy is still to come.

        `seconds`: since the epoch started, or since the resume; its samples/s counts the samples of that time.
        """
        st = self.state
        closed = ClosedEpoch(epoch=st.step // self.steps_per_epoch, steps=st.step, samples=st.epoch_samples,
                             loss=st.epoch_loss_sum / st.epoch_samples,
                             train_accuracy=st.epoch_correct / st.epoch_samples, seconds=seconds,
                             params={k: v.copy() for k, v in self.model.params.items()},
                             timed_samples=st.epoch_samples - self.untimed_samples)
        st.epoch_loss_sum, st.epoch_correct, st.epoch_samples = 0.0, 0, 0
        self.untimed_samples = 0
        return closed

    def test_accuracy(self, params: Params) -> float:
        """Accuracy of `params` on the test set.  Reads nothing that training changes: safe in another thread."""
        return evaluate(params, self.data.test_images, self.data.test_labels, model=type(self.model))

    def record_epoch(self, closed: ClosedEpoch, test_accuracy: float) -> EpochStats:
        """A closed epoch, with its test accuracy, into the history (in epoch order: the caller's promise);
        then `on_epoch` is told, with its timing (not in the history: a resumed run's must equal an
        uninterrupted one's) and its parameters."""
        stats = EpochStats(epoch=closed.epoch, steps=closed.steps, samples=closed.samples, loss=closed.loss,
                           train_accuracy=closed.train_accuracy, test_accuracy=test_accuracy, seconds=closed.seconds,
                           timed_samples=closed.timed_samples)
        self.state.history.append({"epoch": stats.epoch, "samples": stats.samples, "loss": stats.loss,
                                   "train_accuracy": stats.train_accuracy, "test_accuracy": test_accuracy})
        self.on_epoch(stats.record(), closed.params)
        return stats

    def final_test_accuracy(self) -> float:
        """The test accuracy of the parameters as they are: the last epoch's, unless the run ended mid-epoch."""
        st = self.state
        if st.history and st.step % self.steps_per_epoch == 0:
            return st.history[-1]["test_accuracy"]
        return evaluate(self.model.params, self.data.test_images, self.data.test_labels, model=type(self.model))
