"""What every model offers the rest of the product: the `Model` base class and its shared types.

Nothing outside a model's own file knows its layers.  The trainer, the shards, the
wire protocol, the checkpoints, the bounds, the probe, export and predict ask the
model class instead: its parameter names and shapes (`PARAM_SHAPES`, in PyTorch
state_dict order), which gradients travel as per-shard sums for the reduction tree
(`TREE_PARAMS`) and which as per-sample factors (`LINEAR_LAYERS`, whose weight and
bias gradients are delta^T @ input, from the factors `<layer>.input` and
`<layer>.delta` of `FACTOR_WIDTHS`).  A second architecture is a subclass in its own
file plus one line in `lenet.models.MODELS` (docs/how-it-works.md, "Models").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, ClassVar, NamedTuple

import numpy as np

from lenet.params import Params
from lenet.reduction import add

Factors = dict[str, np.ndarray]  # FACTOR_WIDTHS name -> (N, width), one row per sample in batch order


class SumLossGrads(NamedTuple):
    """Loss and gradients *summed* over a batch: shards of a batch add up exactly."""

    loss_sum: float
    correct: int
    grads: Params


class StackedSums(NamedTuple):
    """Consecutive shards' results: per sample, losses (N,) and correct (N,) bool; grads TREE_PARAMS name
    -> (S, *shape) (row s: shard s); and factors FACTOR_WIDTHS name -> (N, width) (row i: sample i)."""

    losses: np.ndarray
    correct: np.ndarray
    grads: Params
    factors: Factors


def linear_grads(factors: Factors) -> Params:
    """The linear layers' summed gradients from the factors of a batch's samples.

    For every layer with factors `<layer>.delta` and `<layer>.input`: weight
    delta^T @ input (one product over all N samples), bias delta summed over the
    samples in order.  Computed once, where the whole batch's factors are known, so
    the result depends on the batch and not on who computed which sample.
    """
    grads: Params = {}
    for name in factors:
        if name.endswith(".delta"):
            layer = name[: -len(".delta")]
            delta, x = factors[name], factors[f"{layer}.input"]
            grads[f"{layer}.weight"] = delta.T @ x
            grads[f"{layer}.bias"] = delta.sum(axis=0)
    return grads


def concat_factors(parts: Sequence[Factors]) -> Factors:
    """Factors of consecutive runs of samples, joined in order (exact: a copy)."""
    if len(parts) == 1:
        return parts[0]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


class Model:
    """A network holding its parameters in `params` (float32 unless told otherwise).

    Subclasses set the class attributes and implement the methods that raise
    NotImplementedError; `TREE_PARAMS` and the LINEAR_LAYERS' weights and biases
    together are exactly the keys of PARAM_SHAPES.  Assign new arrays into `params`
    to set weights; they must keep the shapes of PARAM_SHAPES.
    """

    name: ClassVar[str]  # the registry key (lenet.models), recorded in model files and checkpoints
    TITLE: ClassVar[str]  # what people call it, in messages ("LeNet-5")
    DESCRIPTION: ClassVar[str]  # one line, for model files and the ONNX graph
    PARAM_SHAPES: ClassVar[dict[str, tuple[int, ...]]]
    TREE_PARAMS: ClassVar[tuple[str, ...]]
    LINEAR_LAYERS: ClassVar[tuple[str, ...]]
    FACTOR_WIDTHS: ClassVar[dict[str, int]]
    NONNEGATIVE_FACTORS: ClassVar[frozenset[str]] = frozenset()  # factors no honest pass makes negative
    INPUT_SHAPE: ClassVar[tuple[int, ...]]  # one sample of `prepare`'s output
    CHUNK: ClassVar[int] = 64  # samples per `_pass` at most: its working set stays near the L2 cache
    ONNX_PROPS: ClassVar[dict[str, str]] = {}  # what a consumer of the ONNX graph must know (preprocessing)
    INPUT_DOC: ClassVar[str]  # the ONNX graph's input, in words
    OUTPUT_DOC: ClassVar[str] = "scores (N, 10) for digits 0-9, the highest the prediction"

    def __init__(self, seed: int = 0, dtype: type = np.float32) -> None:
        self.dtype = np.dtype(dtype)
        self.params: Params = self.init_params(seed, dtype)

    # ------------------------------------------------------------------ what a model must implement

    @classmethod
    def init_params(cls, seed: int, dtype: type = np.float32) -> Params:
        """Initial parameters in PARAM_SHAPES order, a pure function of the seed."""
        raise NotImplementedError

    @staticmethod
    def prepare(pixels: np.ndarray) -> np.ndarray:
        """The network's input for uint8 images (N, 28, 28)."""
        raise NotImplementedError

    def forward(self, x: np.ndarray) -> np.ndarray:
        """The outputs (N, 10) for x as `prepare` gives it."""
        raise NotImplementedError

    @staticmethod
    def scores(outputs: np.ndarray) -> np.ndarray:
        """(N, 10) from `forward`'s outputs, higher meaning more likely (the predicted class is the argmax)."""
        return outputs

    def _pass(self, x: np.ndarray, y: np.ndarray, sizes: Sequence[int]) -> StackedSums:
        """Consecutive shards of x, `sizes[i]` samples each, at most CHUNK samples in all, in one pass: per-sample
        losses and correctness, TREE_PARAMS gradients per shard (S, *shape), factors per sample (N, width);
        each shard's rows bit for bit what the shard alone gives."""
        raise NotImplementedError

    @classmethod
    def per_sample_bounds(cls, params: Params) -> dict[str, float]:
        """The largest |element| one honest sample can give, for every gradient and every factor name."""
        raise NotImplementedError

    @classmethod
    def outcome_problem(cls, losses: np.ndarray, correct: int) -> str | None:
        """Why a unit's per-sample losses and its count of right answers cannot come from one honest pass, or
        None.  A model whose loss says nothing about correctness (the default) checks nothing."""
        return None

    @classmethod
    def onnx_nodes(cls, helper: Any, input: str, output: str) -> list[Any]:
        """The ONNX graph's nodes from `input` (N, *INPUT_SHAPE) to `output` (N, 10), the parameters
        referred to by their PARAM_SHAPES names (onnx.helper is passed in: onnx is an optional extra)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ shared by every model

    def stacked_shard_sums(self, x: np.ndarray, y: np.ndarray, sizes: Sequence[int]) -> StackedSums:
        """The sums of consecutive shards of x, `sizes[i]` samples each, as stacks.

        Shard s's tree gradients are row s of every `grads` array, bit for bit what
        the shard alone would give (the reduction tree adds them, and its result
        must not depend on how shards were grouped into calls); sample i's factors
        are row i of every `factors` array, likewise independent of the grouping.
        Consecutive shards are computed together, up to CHUNK samples per pass (`_pass`):
        the layers' products are per sample (see layers.py).  A shard larger than CHUNK
        is computed alone, in CHUNK pieces whose sums are added in order: a pass's
        working set then stays near the L2 cache, and memory stays bounded.
        """
        if any(s < 1 for s in sizes) or sum(sizes) != len(y) or len(x) != len(y):
            raise ValueError(f"shard sizes {list(sizes)} do not split {len(x)} images and {len(y)} labels")
        y = np.asarray(y, dtype=np.intp)
        chunk = self.CHUNK
        parts: list[StackedSums] = []
        lo = 0
        group: list[int] = []  # sizes of the shards of the pass being gathered, starting at sample lo
        for size in [*sizes, None]:
            if group and (size is None or size > chunk or sum(group) + size > chunk):
                hi = lo + sum(group)
                parts.append(self._pass(x[lo:hi], y[lo:hi], group))
                lo, group = hi, []
            if size is None:
                break
            if size > chunk:
                parts.append(self._large_shard(x[lo : lo + size], y[lo : lo + size]))
                lo += size
            else:
                group.append(size)
        if len(parts) == 1:
            return parts[0]
        return StackedSums(np.concatenate([p.losses for p in parts]), np.concatenate([p.correct for p in parts]),
                           {k: np.concatenate([p.grads[k] for p in parts]) for k in self.TREE_PARAMS},
                           concat_factors([p.factors for p in parts]))

    def _large_shard(self, x: np.ndarray, y: np.ndarray) -> StackedSums:
        """One shard of more than CHUNK samples, CHUNK at a time: its sums added in order, its samples' results
        joined."""
        chunk = self.CHUNK
        pieces = [self._pass(x[i : i + chunk], y[i : i + chunk], [len(y[i : i + chunk])])
                  for i in range(0, len(y), chunk)]
        grads = pieces[0].grads
        for piece in pieces[1:]:
            grads = add(grads, piece.grads)
        return StackedSums(np.concatenate([p.losses for p in pieces]), np.concatenate([p.correct for p in pieces]),
                           grads, concat_factors([p.factors for p in pieces]))

    def sum_loss_and_grads(self, x: np.ndarray, y: np.ndarray) -> SumLossGrads:
        """Loss and gradients summed (not averaged) over the batch, as one shard."""
        stacked = self.stacked_shard_sums(x, y, [len(y)])
        grads = {k: g[0] for k, g in stacked.grads.items()}
        grads.update(linear_grads(stacked.factors))
        return SumLossGrads(math.fsum(stacked.losses.tolist()), int(stacked.correct.sum()),
                            {name: grads[name] for name in self.PARAM_SHAPES})

    @classmethod
    def check_params(cls, params: dict[str, np.ndarray], origin: str) -> Params:
        """Validate names, shapes and dtype of a parameter dict (from a file or the wire)."""
        if set(params) != set(cls.PARAM_SHAPES):
            missing = sorted(set(cls.PARAM_SHAPES) - set(params))
            extra = sorted(set(params) - set(cls.PARAM_SHAPES))
            raise ValueError(f"{origin}: parameter names do not match {cls.TITLE}: missing {missing}, "
                             f"unexpected {extra}")
        for name, shape in cls.PARAM_SHAPES.items():
            a = params[name]
            if a.shape != shape or a.dtype != np.float32:
                raise ValueError(f"{origin}: {name} is {a.dtype}{a.shape}, expected float32{shape}")
        return {name: params[name] for name in cls.PARAM_SHAPES}
