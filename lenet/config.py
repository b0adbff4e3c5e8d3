"""Training hyper-parameters, shared by the single-process trainer and the coordinator.

One `TrainConfig` fixes everything that decides the numbers a run produces, so the
distributed service and the reference trainer can be compared on the same config.
The command-line flags for it are defined here once (`add_training_flags`), each
with an environment variable LENET_<FLAG> as its default (`lenet.cli`).
"""

from __future__ import annotations

import argparse
import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from lenet.cli import add_flag, optional, parse_bool
from lenet.models import DEFAULT_MODEL, MODELS, get_model
from lenet.params import Params
from lenet.optim import SCHEDULES, SGD, Adam, LRSchedule

# The learning rate is quoted for this global batch size and scaled linearly with
# the actual one (Goyal et al., 2017), unless --lr is given explicitly.
REFERENCE_BATCH = 128
REFERENCE_LR = 0.05


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 5
    batch_size: int = 128
    lr: float | None = None  # None: REFERENCE_LR * batch_size / REFERENCE_BATCH
    optimizer: str = "sgd"
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    warmup_steps: int = 100
    seed: int = 0
    max_steps: int | None = None
    train_subset: int | None = None  # train on the first N images only (smoke runs, tests)
    model: str = DEFAULT_MODEL  # a name of lenet.models.MODELS
    # 1: each step's gradient is computed with the parameters of one step before (p[s+1] = update(p[s],
    # grad at p[s-1])), so the service's workers compute the next step while the coordinator finishes this
    # one.  A different, still deterministic, run: opt-in, never the default.
    gradient_delay: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {self.batch_size}")
        if self.lr is not None and not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"learning rate must be a positive number, got {self.lr}")
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"optimizer must be 'sgd' or 'adam', got {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.warmup_steps < 0:
            raise ValueError(f"warm-up steps must be >= 0, got {self.warmup_steps}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"max steps must be >= 1, got {self.max_steps}")
        if self.train_subset is not None and not 1 <= self.train_subset <= 60000:
            raise ValueError(f"train subset must be 1-60000 images, got {self.train_subset}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):  # NaN compares false
            raise ValueError(f"weight decay must be a finite number >= 0, got {self.weight_decay}")
        if self.gradient_delay not in (0, 1):
            raise ValueError(f"gradient delay must be 0 or 1 steps, got {self.gradient_delay}")
        get_model(self.model)

    @property
    def base_lr(self) -> float:
        return self.lr if self.lr is not None else REFERENCE_LR * self.batch_size / REFERENCE_BATCH

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


# With --gradient-delay 1, SGD at the default learning rate needs a longer warm-up than the default 100 steps,
# with which it diverged in the measurement (docs/operations.md, "The one-step gradient delay"); 1,500 steps
# trained to within 0.03-0.17 points of the synchronous run in 5 epochs.
DELAY_WARMUP = 1500


def recipe_warning(config: TrainConfig) -> str | None:
    """A line for a configuration measured to train badly, or None."""
    if config.gradient_delay and config.optimizer == "sgd" and config.warmup_steps < DELAY_WARMUP:
        return (f"--gradient-delay {config.gradient_delay} with --warmup-steps {config.warmup_steps}: this diverged "
                f"at the default learning rate when measured; --warmup-steps {DELAY_WARMUP} trains "
                "(docs/operations.md)")
    return None


def make_optimizer(config: TrainConfig, params: Params) -> SGD | Adam:
    if config.optimizer == "adam":
        return Adam(params, weight_decay=config.weight_decay)
    return SGD(params, momentum=config.momentum, nesterov=config.nesterov, weight_decay=config.weight_decay)


def make_schedule(config: TrainConfig, steps_per_epoch: int) -> LRSchedule:
    """Warm-up then decay over the whole run (step decay: x0.1 at 50% and 75% of it; paper: the 1998 paper's
    steps, one per pass over the training set)."""
    total = config.epochs * steps_per_epoch
    warmup = min(config.warmup_steps, total - 1)
    return LRSchedule(
        base_lr=config.base_lr,
        total_steps=total,
        warmup_steps=warmup,
        kind=config.schedule,
        gamma=0.1,
        step_every={"step": max(1, (total - warmup) // 4), "paper": steps_per_epoch}.get(config.schedule, 1),
    )


# --------------------------------------------------------------------------- command-line flags


def add_training_flags(parser: argparse.ArgumentParser) -> None:
    d = TrainConfig()
    add_flag(parser, "--epochs", d.epochs, int, "passes over the 60,000 training images")
    add_flag(parser, "--batch-size", d.batch_size, int, "global mini-batch size")
    add_flag(parser, "--lr", d.lr, optional(float),
             f"peak learning rate (default: {REFERENCE_LR} x batch-size / {REFERENCE_BATCH})")
    add_flag(parser, "--optimizer", d.optimizer, str, "sgd or adam")
    add_flag(parser, "--momentum", d.momentum, float, "SGD momentum")
    add_flag(parser, "--nesterov", d.nesterov, parse_bool, "Nesterov momentum for SGD")
    add_flag(parser, "--weight-decay", d.weight_decay, float, "L2 weight decay")
    add_flag(parser, "--schedule", d.schedule, str, "learning-rate decay after warm-up: cosine, step, or paper "
             "(the 1998 paper's steps per pass: x1 for 2 passes, x0.4 for 3, x0.2 for 3, x0.1 for 4, then x0.02)")
    add_flag(parser, "--warmup-steps", d.warmup_steps, int, "linear learning-rate warm-up steps")
    add_flag(parser, "--seed", d.seed, int, "seed of initialisation and shuffling")
    add_flag(parser, "--max-steps", d.max_steps, optional(int), "stop after this many steps (smoke runs)")
    add_flag(parser, "--train-subset", d.train_subset, optional(int),
             "train on the first N training images only (smoke runs); the test set is always whole")
    add_flag(parser, "--model", d.model, str, f"the architecture to train: one of {', '.join(MODELS)}")
    add_flag(parser, "--gradient-delay", d.gradient_delay, int,
             "1: compute each step's gradient with the previous step's parameters, so the service's workers "
             "never wait for the coordinator (faster; a slightly different run, measured in "
             "docs/measurements.md); 0: the plain synchronous step")


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        optimizer=args.optimizer,
        momentum=args.momentum,
        nesterov=args.nesterov,
        weight_decay=args.weight_decay,
        schedule=args.schedule,
        warmup_steps=args.warmup_steps,
        seed=args.seed,
        max_steps=args.max_steps,
        train_subset=args.train_subset,
        model=args.model,
        gradient_delay=args.gradient_delay,
    )
