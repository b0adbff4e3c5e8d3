"""Optimizers over name-keyed parameter dicts, and the learning-rate schedule.

An optimizer updates `params` in place from `grads` (same keys) at a learning rate
given per step by a `LRSchedule`.  Its state is a flat `dict[str, ndarray]` so that
checkpoints can store it as plain arrays: `state_dict()` / `load_state_dict()`.
All arithmetic stays in the parameters' dtype, so runs are bit-reproducible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from lenet.params import Params



def _check_state(state: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    if set(state) != set(expected):
        missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        raise ValueError(f"optimizer state keys do not match: missing {missing}, unexpected {extra}")
    for key, value in state.items():
        if value.shape != expected[key].shape or value.dtype != expected[key].dtype:
            raise ValueError(
                f"optimizer state {key}: expected {expected[key].dtype}{expected[key].shape}, "
                f"got {value.dtype}{value.shape}"
            )


class SGD:
    """SGD with momentum (optionally Nesterov) and L2 weight decay, as torch.optim.SGD.

    v <- momentum * v + (g + weight_decay * p)
    p <- p - lr * (g' + momentum * v)   (Nesterov, g' = g + weight_decay * p)
    p <- p - lr * v                      (classical)
    """

    def __init__(self, params: Params, momentum: float = 0.9, nesterov: bool = False, weight_decay: float = 0.0):
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if weight_decay < 0:
            raise ValueError(f"weight decay must be >= 0, got {weight_decay}")
        if nesterov and momentum == 0:
            raise ValueError("Nesterov momentum needs momentum > 0, got 0")
        self.momentum, self.nesterov, self.weight_decay = momentum, nesterov, weight_decay
        self.velocity = {k: np.zeros_like(p) for k, p in params.items()}

    def step(self, params: Params, grads: Params, lr: float) -> None:
        """Update `params` in place."""
        for key, p in params.items():
            dt = p.dtype.type
            g = grads[key]
            if self.weight_decay:
                g = g + dt(self.weight_decay) * p
            v = self.velocity[key]
            v *= dt(self.momentum)
            v += g
            update = g + dt(self.momentum) * v if self.nesterov else v
            p -= dt(lr) * update

    def state_dict(self) -> dict[str, np.ndarray]:
        return {f"velocity/{k}": v.copy() for k, v in self.velocity.items()}

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        _check_state(state, self.state_dict())
        self.velocity = {k: np.array(state[f"velocity/{k}"]) for k in self.velocity}


class Adam:
    """Adam (Kingma & Ba) with bias correction and L2 weight decay added to the gradient."""

    def __init__(
        self,
        params: Params,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ):
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"Adam betas must be in [0, 1), got {betas}")
        if weight_decay < 0:
            raise ValueError(f"weight decay must be >= 0, got {weight_decay}")
        self.betas, self.eps, self.weight_decay = betas, eps, weight_decay
        self.m = {k: np.zeros_like(p) for k, p in params.items()}
        self.v = {k: np.zeros_like(p) for k, p in params.items()}
        self.t = 0

    def step(self, params: Params, grads: Params, lr: float) -> None:
        """Update `params` in place."""
        self.t += 1
        b1, b2 = self.betas
        c1, c2 = 1 - b1**self.t, 1 - b2**self.t
        for key, p in params.items():
            dt = p.dtype.type
            g = grads[key]
            if self.weight_decay:
                g = g + dt(self.weight_decay) * p
            m, v = self.m[key], self.v[key]
            m *= dt(b1)
            m += dt(1 - b1) * g
            v *= dt(b2)
            v += dt(1 - b2) * (g * g)
            denom = np.sqrt(v / dt(c2)) + dt(self.eps)
            p -= dt(lr / c1) * m / denom

    def state_dict(self) -> dict[str, np.ndarray]:
        state = {f"m/{k}": a.copy() for k, a in self.m.items()}
        state.update({f"v/{k}": a.copy() for k, a in self.v.items()})
        state["t"] = np.array(self.t, dtype=np.int64)
        return state

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        _check_state(state, self.state_dict())
        self.m = {k: np.array(state[f"m/{k}"]) for k in self.m}
        self.v = {k: np.array(state[f"v/{k}"]) for k in self.v}
        self.t = int(state["t"])


SCHEDULES = ("cosine", "step", "paper")
# LeCun et al. 1998, on its MNIST results: a global learning rate of 0.0005 for the first two passes, 0.0002 for
# the next three, 0.0001 for the next three, 0.00005 for the next four and 0.00001 thereafter; here as
# (passes, factor of the first rate).
PAPER_STEPS: tuple[tuple[int, float], ...] = ((2, 1.0), (3, 0.4), (3, 0.2), (4, 0.1))
PAPER_LAST_FACTOR = 0.02


def paper_factor(epoch: int) -> float:
    """The 1998 paper's learning-rate factor for pass `epoch` (0-based)."""
    for passes, factor in PAPER_STEPS:
        if epoch < passes:
            return factor
        epoch -= passes
    return PAPER_LAST_FACTOR


@dataclass(frozen=True)
class LRSchedule:
    """Learning rate as a pure function of the global step.

    Linear warm-up from base_lr / warmup_steps to base_lr over `warmup_steps`, then
    either cosine decay to `min_lr` at `total_steps`, or step decay (multiply by
    `gamma` every `step_every` steps after warm-up), or the 1998 paper's steps
    ("paper": base_lr times the factor of the pass, `paper_factor(step // step_every)`,
    a pass being `step_every` steps counted from the first: warm-up only ramps the
    first pass's start).
    """

    base_lr: float
    total_steps: int
    warmup_steps: int = 0
    kind: str = "cosine"
    min_lr: float = 0.0
    gamma: float = 0.1
    step_every: int = 1

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.kind!r}")
        if self.base_lr <= 0 or not math.isfinite(self.base_lr):
            raise ValueError(f"learning rate must be a positive number, got {self.base_lr}")
        if self.total_steps < 1:
            raise ValueError(f"total steps must be >= 1, got {self.total_steps}")
        if self.warmup_steps < 0:
            raise ValueError(f"warm-up steps must be >= 0, got {self.warmup_steps}")
        if self.step_every < 1:
            raise ValueError(f"step decay interval must be >= 1, got {self.step_every}")

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.base_lr * (step + 1) / self.warmup_steps * (
                paper_factor(step // self.step_every) if self.kind == "paper" else 1.0)
        after = step - self.warmup_steps
        if self.kind == "step":
            return self.base_lr * self.gamma ** (after // self.step_every)
        if self.kind == "paper":
            return self.base_lr * paper_factor(step // self.step_every)
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, after / span)
        return self.min_lr + 0.5 * (self.base_lr - self.min_lr) * (1 + math.cos(math.pi * progress))
