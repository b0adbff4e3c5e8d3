"""The LeNet-5 of LeCun, Bottou, Bengio and Haffner (Proc. IEEE, 1998), layers and network, by hand.

    input (N, 1, 32, 32): the 28x28 digit padded by 2, background -0.1, ink 1.175
    C1  6 maps 5x5                         -> (N, 6, 28, 28)   squash      156 parameters
    S2  2x2 sums x coefficient + bias      -> (N, 6, 14, 14)   squash       12
    C3  16 maps 5x5 over Table I's inputs  -> (N, 16, 10, 10)  squash    1,516
    S4  like S2                            -> (N, 16, 5, 5)    squash       32
    C5  120 maps 5x5 on 5x5 maps: 400->120 -> (N, 120)         squash   48,120
    F6  120->84                            -> (N, 84)          squash   10,164
    RBF 10 Euclidean units, fixed +-1 centres (7x12 digit bitmaps) -> penalties (N, 10)
                                                                        60,000 trainable

Squashing f(a) = A tanh(S a), A = 1.7159, S = 2/3 (appendix A); weights and biases
uniform in +-2.4 / fan-in (the unit's number of inputs); the loss is eq. 9 (see
`rbf_loss`).  The layers are CS231n-style pairs, `forward -> (out, cache)` and
`backward(dout, cache)`, every product one per sample as in lenet/layers.py (a
sample's numbers must not depend on which samples shared its call), and the
subsampling layers' parameter gradients summed from per-sample partials in a fixed
order, per shard when asked (`layers.segment_sums`).

Gradients leave a pass in the two forms of the service: the convolutions' and
subsamplings' (TREE_PARAMS, 1,716 numbers) summed per shard for the reduction tree;
C5's and F6's (C5 on a 5x5 input is a full connection, 400 -> 120) as per-sample
factors, multiplied out once per batch.  Their inputs are squashed outputs, which can
be negative: no factor is sign-constrained (NONNEGATIVE_FACTORS is empty).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from lenet import layers
from lenet.architecture import Model, StackedSums
from lenet.params import Params

Array = np.ndarray

A, S = 1.7159, 2.0 / 3.0  # the squashing function's amplitude and slope
# Eq. 9's constant j: exp(-j) competes with the classes' exp(-penalty), so a wrong class is pushed
# up only while its penalty is within a few units of j, and one already far above stays put.  The
# paper gives no value.  Penalties between two centres are 4 x their Hamming distance, at least 28
# here.  Short runs (3 epochs): j = 1, 3 and 10 within 0.3 % test error of each other, 3 the best;
# j = 50 (nearly cross-entropy over -penalties) 3 % worse.
J = 3.0
PIXEL_BACKGROUND, PIXEL_INK = -0.1, 1.175

# Table I: the S2 maps (rows of the paper's table) each C3 map takes: six maps take 3
# neighbours, six take 4 neighbours, three take 4 non-neighbours, the last takes all 6.
C3_TABLE: tuple[tuple[int, ...], ...] = (
    (0, 1, 2), (1, 2, 3), (2, 3, 4), (3, 4, 5), (0, 4, 5), (0, 1, 5),
    (0, 1, 2, 3), (1, 2, 3, 4), (2, 3, 4, 5), (0, 3, 4, 5), (0, 1, 4, 5), (0, 1, 2, 5),
    (0, 1, 3, 4), (1, 2, 4, 5), (0, 2, 3, 5),
    (0, 1, 2, 3, 4, 5),
)
# C3's kernels, one per connection, in this order: (C3 map, S2 map), by C3 map then S2 map.
C3_CONNECTIONS: tuple[tuple[int, int], ...] = tuple((f, c) for f, ins in enumerate(C3_TABLE) for c in ins)

# The RBF centres: the paper's Fig. 3 bitmaps of the digits, 12 rows of 7, '#' = +1 (ink),
# '.' = -1, rows flattened in order.  Transcribed from the widely copied table of
# github.com/mattwang44/LeNet-from-Scratch, utils/RBF_initial_weight.py (the same table is in
# AlgorithmicIntelligence/quantization_lenet, RBF_BITMAP.py).  Constants, not parameters.
_BITMAPS = (
    (".#####.", ".......", "..###..", ".##.##.", "##...##", "##...##",
     "##...##", "##...##", ".##.##.", "..###..", ".......", "......."),
    ("...##..", "..###..", ".####..", "...##..", "...##..", "...##..",
     "...##..", "...##..", "...##..", ".######", ".......", "......."),
    (".#####.", ".......", ".#####.", "##...##", "#....##", "....##.",
     "..###..", ".##....", "##.....", "#######", ".......", "......."),
    ("#######", ".....##", "....##.", "...##..", "..####.", ".....##",
     ".....##", ".....##", "##...##", ".#####.", ".......", "......."),
    (".#####.", ".......", ".......", ".##..##", ".##..##", "###..##",
     "##...##", "##...##", "##..###", ".######", ".....##", ".....##"),
    (".#####.", ".......", "#######", "##.....", "##.....", ".####..",
     "..####.", ".....##", "##...##", ".#####.", ".......", "......."),
    ("..####.", ".##....", "##.....", "##.....", "######.", "###..##",
     "##...##", "##...##", "###..##", ".#####.", ".......", "......."),
    ("#######", ".....##", ".....##", "....##.", "...##..", "...##..",
     "..##...", "..##...", "..##...", "..##...", ".......", "......."),
    (".#####.", "##...##", "##...##", "##...##", ".#####.", "##...##",
     "##...##", "##...##", "##...##", ".#####.", ".......", "......."),
    (".#####.", "##..###", "##...##", "##...##", "##..###", ".######",
     ".....##", ".....##", "....##.", ".####..", ".......", "......."),
)
RBF_CENTRES = np.array([[1.0 if ch == "#" else -1.0 for row in digit for ch in row] for digit in _BITMAPS])  # (10, 84)

PARAM_SHAPES: dict[str, tuple[int, ...]] = {
    "c1.weight": (6, 1, 5, 5), "c1.bias": (6,),
    "s2.weight": (6,), "s2.bias": (6,),
    "c3.weight": (len(C3_CONNECTIONS), 5, 5), "c3.bias": (16,),
    "s4.weight": (16,), "s4.bias": (16,),
    "c5.weight": (120, 400), "c5.bias": (120,),  # the 120 kernels (16, 5, 5) flattened in C order
    "f6.weight": (84, 120), "f6.bias": (84,),
}
TREE_PARAMS = ("c1.weight", "c1.bias", "s2.weight", "s2.bias", "c3.weight", "c3.bias", "s4.weight", "s4.bias")
LINEAR_LAYERS = ("c5", "f6")
FACTOR_WIDTHS: dict[str, int] = {"c5.input": 400, "c5.delta": 120, "f6.input": 120, "f6.delta": 84}
NONNEGATIVE_FACTORS: frozenset[str] = frozenset()  # squashed outputs are within +-A

CHUNK = 64  # samples per pass, as lenet.model: a pass's working set stays near the L2 cache


# --------------------------------------------------------------------------- layers


def squash_forward(a: Array) -> tuple[Array, Array]:
    """f(a) = A tanh(S a), elementwise, any shape; the cache is the output."""
    dt = a.dtype.type
    out = np.tanh(dt(S) * a)
    out *= dt(A)
    return out, out


def squash_backward(dout: Array, cache: Array) -> Array:
    """dout * f'(a), with f'(a) = A S (1 - tanh^2) = (S / A) (A^2 - f(a)^2) from the output alone."""
    out = cache
    dt = out.dtype.type
    return dout * (dt(S / A) * (dt(A * A) - out * out))


def subsample_forward(x: Array, w: Array, b: Array) -> tuple[Array, tuple]:
    """The paper's subsampling: each map's non-overlapping 2x2 sums times its coefficient plus its bias.

    x: (N, C, H, W), H and W even   w, b: (C,)   ->   (N, C, H/2, W/2)
    """
    if x.shape[2] % 2 or x.shape[3] % 2:
        raise ValueError(f"subsampling needs an even spatial size, got {x.shape[2]}x{x.shape[3]}")
    sums = x[:, :, 0::2, 0::2] + x[:, :, 0::2, 1::2]  # the four elements in a fixed order
    sums += x[:, :, 1::2, 0::2]
    sums += x[:, :, 1::2, 1::2]
    out = sums * w[:, None, None]
    out += b[:, None, None]
    return out, (sums, w)


def subsample_backward(dout: Array, cache: tuple, sizes: Sequence[int] | None = None) -> tuple[Array, Array, Array]:
    """Gradients of `subsample_forward`: dout (N, C, H/2, W/2) -> dx (N, C, H, W), dw, db.

    dw, db: (C,) summed over the batch, or with `sizes` one row per segment, (S, C):
    per-sample partials (each a sum over its own map) added up by `layers.segment_sums`.
    """
    sums, w = cache
    n, c = dout.shape[:2]
    dw = layers.segment_sums((dout * sums).reshape(n, c, -1).sum(axis=2), sizes)
    db = layers.segment_sums(dout.reshape(n, c, -1).sum(axis=2), sizes)
    dsum = dout * w[:, None, None]
    dx = np.empty((n, c, 2 * dout.shape[2], 2 * dout.shape[3]), dtype=dout.dtype)
    for i in (0, 1):
        for j in (0, 1):
            dx[:, :, i::2, j::2] = dsum
    return dx, dw, db


def table_conv_forward(x: Array, w: Array, b: Array, table: Sequence[tuple[int, int]],
                       maps: int) -> tuple[Array, tuple]:
    """A 5x5-style convolution whose output map f sees only the input maps the table connects to it.

    x: (N, C, H, W)   w: (K, KH, KW), kernel k for connection table[k] = (f, c)   b: (maps,)
    out: (N, maps, H - KH + 1, W - KW + 1)

    Computed as `layers.conv_forward` with a dense (maps, C, KH, KW) kernel that is zero
    off the table: the zeros add exact zeros, so the function is the sparse one.
    """
    dense = np.zeros((maps, x.shape[1], *w.shape[1:]), dtype=w.dtype)
    f_idx, c_idx = np.array(table).T
    dense[f_idx, c_idx] = w
    out, cache = layers.conv_forward(x, dense, b, pad=0)
    return out, (cache, f_idx, c_idx)


def table_conv_backward(dout: Array, cache: tuple, sizes: Sequence[int] | None = None) -> tuple[Array, Array, Array]:
    """Gradients of `table_conv_forward`: dout (N, maps, OH, OW) -> dx (N, C, H, W), dw (K, KH, KW), db (maps,).

    With `sizes`, dw and db have a leading segment axis, as `layers.conv_backward`.
    """
    conv_cache, f_idx, c_idx = cache
    dx, dw, db = layers.conv_backward(dout, conv_cache, sizes)
    return dx, dw[..., f_idx, c_idx, :, :], db


def conv_param_grads(dout: Array, cache: tuple, sizes: Sequence[int] | None = None) -> tuple[Array, Array]:
    """The weight and bias gradients of `layers.conv_forward` alone, as `layers.conv_backward` gives them.

    For C1, whose input (the images) needs no gradient: its input gradient would be the
    largest single cost of a training pass.
    """
    cols, w, _, _ = cache
    n, f = dout.shape[:2]
    dwb = layers.segment_sums(np.matmul(cols, dout.reshape(n, f, -1).transpose(0, 2, 1)), sizes)  # (..., K + 1, F)
    dwb = np.ascontiguousarray(np.swapaxes(dwb, -1, -2))
    return dwb[..., :-1].reshape(dwb.shape[:-2] + w.shape), np.ascontiguousarray(dwb[..., -1])


def rbf_forward(x: Array, centres: Array) -> tuple[Array, tuple]:
    """Euclidean RBF units: penalty_i = sum_j (x_j - centre_ij)^2.

    x: (N, D)   centres: (K, D)   ->   (N, K).  Elementwise differences and a
    reduction per sample (no product over the batch, see the module docstring).
    """
    diff = x[:, None, :] - centres.astype(x.dtype)[None]  # (N, K, D)
    return (diff * diff).sum(axis=2), diff


def rbf_backward(dout: Array, cache: Array) -> Array:
    """dout (N, K) -> dx (N, D) = 2 sum_i dout_i (x - centre_i)."""
    diff = cache
    dt = diff.dtype.type
    return dt(2) * (dout[:, :, None] * diff).sum(axis=1)


def rbf_loss(penalties: Array, y: Array, j: float = J) -> tuple[Array, Array, Array]:
    """The paper's eq. 9 per sample: penalty of the right class + log(exp(-j) + sum_i exp(-penalty_i)).

    penalties: (N, K), y: int (N,).  Returns (losses (N,), correct (N,) bool, dpenalties
    (N, K)), the gradient of the losses' sum.  Computed stably around m = min(j, penalties):
    the loss is never below 0 (log-sum >= -penalty of the right class).  A sample is
    correct when its class has the smallest penalty (the first one on ties).
    """
    n = penalties.shape[0]
    dt = penalties.dtype.type
    m = np.minimum(penalties.min(axis=1, keepdims=True), dt(j))
    exp = np.exp(m - penalties)
    total = exp.sum(axis=1, keepdims=True) + np.exp(m - dt(j))
    rows = np.arange(n)
    losses = penalties[rows, y] - m[:, 0] + np.log(total[:, 0])
    dpen = -exp / total
    dpen[rows, y] += 1
    return losses, penalties.argmin(axis=1) == y, dpen


# --------------------------------------------------------------------------- the network


def _fan_ins() -> dict[str, Array | int]:
    """Each parameter's number of inputs of its unit (a C3 map's depends on its row of Table I)."""
    c3_maps = np.array([25 * len(ins) for ins in C3_TABLE])  # 75, 100 or 150
    c3_kernels = np.array([c3_maps[f] for f, _ in C3_CONNECTIONS])[:, None, None]
    return {"c1.weight": 25, "c1.bias": 25, "s2.weight": 4, "s2.bias": 4, "c3.weight": c3_kernels,
            "c3.bias": c3_maps, "s4.weight": 4, "s4.bias": 4, "c5.weight": 400, "c5.bias": 400,
            "f6.weight": 120, "f6.bias": 120}


def init_params(seed: int, dtype: type = np.float32) -> Params:
    """Weights and biases uniform in +-2.4 / fan-in (the paper's appendix A), drawn from default_rng(seed) in
    PARAM_SHAPES order."""
    rng = np.random.default_rng(seed)
    fan_in = _fan_ins()
    return {name: (rng.uniform(-1.0, 1.0, shape) * (2.4 / fan_in[name])).astype(dtype)
            for name, shape in PARAM_SHAPES.items()}


_PIXEL_TABLE = (PIXEL_BACKGROUND + np.arange(256) * ((PIXEL_INK - PIXEL_BACKGROUND) / 255)).astype(np.float32)
MAX_INPUT = float(np.abs(_PIXEL_TABLE).max())
A_MAX = max(A, float(np.float32(A)))  # |f(a)| <= float32(A) in float32 (|tanh| <= 1, rounding is monotone)


class LeNet5_1998(Model):
    """The 1998 network, holding its 60,000 parameters in `params` (float32 unless told otherwise)."""

    name = "lenet5-1998"
    TITLE = "LeNet-5 (1998)"
    DESCRIPTION = ("LeNet-5 as in LeCun et al. 1998 (C1 6@5x5, S2 trainable 2x2, C3 16@5x5 by Table I, S4, "
                   "C5 120, F6 84, scaled tanh, RBF output with fixed 7x12 digit codes, eq. 9 loss)")
    INPUT_SHAPE = (1, 32, 32)
    CHUNK = CHUNK
    ONNX_PROPS = {"pixel_background": str(PIXEL_BACKGROUND), "pixel_ink": str(PIXEL_INK), "padding": "2"}
    INPUT_DOC = (f"float32 (N, 1, 32, 32): the 28x28 digit padded by 2, pixels p scaled to "
                 f"{PIXEL_BACKGROUND} + p/255 * {PIXEL_INK - PIXEL_BACKGROUND:g} (background {PIXEL_BACKGROUND}, "
                 f"ink {PIXEL_INK})")
    OUTPUT_DOC = "RBF penalties (N, 10) for digits 0-9, the smallest the prediction"
    PARAM_SHAPES = PARAM_SHAPES
    TREE_PARAMS = TREE_PARAMS
    LINEAR_LAYERS = LINEAR_LAYERS
    FACTOR_WIDTHS = FACTOR_WIDTHS
    NONNEGATIVE_FACTORS = NONNEGATIVE_FACTORS

    init_params = staticmethod(init_params)

    @staticmethod
    def prepare(pixels: Array) -> Array:
        """uint8 (N, 28, 28) -> float32 (N, 1, 32, 32): padded by 2 with background, background -0.1, ink 1.175."""
        if pixels.dtype != np.uint8:
            raise ValueError(f"images must be uint8, got {pixels.dtype}")
        out = np.full((len(pixels), 1, 32, 32), _PIXEL_TABLE[0], dtype=np.float32)
        out[:, 0, 2:30, 2:30] = _PIXEL_TABLE[pixels]
        return out

    @staticmethod
    def scores(outputs: Array) -> Array:
        """Higher = more likely: minus the penalties."""
        return -outputs

    # ------------------------------------------------------------------ passes

    def _features(self, x: Array) -> tuple[Array, list]:
        """C1 .. S4, one product per sample: x (N, 1, 32, 32) -> (N, 400), S4's maps flattened in C order."""
        p = self.params
        if x.ndim != 4 or x.shape[1:] != (1, 32, 32):
            raise ValueError(f"expected input of shape (N, 1, 32, 32), got {x.shape}")
        h = np.asarray(x, dtype=self.dtype)
        h, c1 = layers.conv_forward(h, p["c1.weight"], p["c1.bias"], pad=0)  # (N, 6, 28, 28)
        h, t1 = squash_forward(h)
        h, s2 = subsample_forward(h, p["s2.weight"], p["s2.bias"])  # (N, 6, 14, 14)
        h, t2 = squash_forward(h)
        h, c3 = table_conv_forward(h, p["c3.weight"], p["c3.bias"], C3_CONNECTIONS, 16)  # (N, 16, 10, 10)
        h, t3 = squash_forward(h)
        h, s4 = subsample_forward(h, p["s4.weight"], p["s4.bias"])  # (N, 16, 5, 5)
        h, t4 = squash_forward(h)
        return h.reshape(len(h), 400), [c1, t1, s2, t2, c3, t3, s4, t4]

    def _head(self, h: Array) -> tuple[Array, list]:
        """C5, F6 and the RBF units: h (N, 1, 400), one product per sample -> penalties (N, 10)."""
        p = self.params
        h, c5 = layers.linear_forward(h, p["c5.weight"], p["c5.bias"])
        h, t5 = squash_forward(h)
        h, f6 = layers.linear_forward(h, p["f6.weight"], p["f6.bias"])
        h, t6 = squash_forward(h)
        penalties, rbf = rbf_forward(h[:, 0], RBF_CENTRES)
        return penalties, [c5, t5, f6, t6, rbf]

    def forward(self, x: Array) -> Array:
        """Penalties (N, 10) for prepared images x (N, 1, 32, 32): the smallest is the predicted digit."""
        out = []
        for i in range(0, max(1, len(x)), CHUNK):
            h = self._features(x[i : i + CHUNK])[0]
            out.append(self._head(h[:, None, :])[0])
        return np.concatenate(out)

    def _pass(self, x: Array, y: Array, sizes: Sequence[int]) -> StackedSums:
        """Consecutive shards in one pass (at most CHUNK samples): tree gradients per shard, factors per sample."""
        h, feature_caches = self._features(x)
        penalties, (c5, t5, f6, t6, rbf) = self._head(h[:, None, :])
        losses, correct, dpen = rbf_loss(penalties, y)
        d6 = squash_backward(rbf_backward(dpen, rbf)[:, None, :], t6)  # (N, 1, 84)
        d5 = squash_backward(d6 @ f6[1], t5)  # (N, 1, 120)
        factors = {"c5.input": c5[0][:, 0], "c5.delta": d5[:, 0], "f6.input": f6[0][:, 0], "f6.delta": d6[:, 0]}
        grads = self._features_backward((d5 @ c5[1])[:, 0], feature_caches, sizes)
        return StackedSums(losses, correct, grads, factors)

    def _features_backward(self, dh: Array, caches: list, sizes: Sequence[int]) -> Params:
        """Back through S4 .. C1 from dh (N, 400): the tree gradients, one row per shard."""
        c1, t1, s2, t2, c3, t3, s4, t4 = caches
        g: Params = {}
        d = squash_backward(dh.reshape(len(dh), 16, 5, 5), t4)
        d, g["s4.weight"], g["s4.bias"] = subsample_backward(d, s4, sizes)
        d = squash_backward(d, t3)
        d, g["c3.weight"], g["c3.bias"] = table_conv_backward(d, c3, sizes)
        d = squash_backward(d, t2)
        d, g["s2.weight"], g["s2.bias"] = subsample_backward(d, s2, sizes)
        d = squash_backward(d, t1)
        g["c1.weight"], g["c1.bias"] = conv_param_grads(d, c1, sizes)
        return {name: g[name] for name in TREE_PARAMS}

    # ------------------------------------------------------------------ checks

    @classmethod
    def per_sample_bounds(cls, params: Params) -> dict[str, float]:
        """The largest |element| one sample can give, for every gradient and factor (see lenet.bounds).

        Forward: inputs within MAX_INPUT, every squashed output within A_MAX.  Backward:
        the RBF loss's gradient at F6's output is 2 sum_i g_i (x - centre_i) with
        g_right = 1 - p_right >= 0 and the others -p_i, whose magnitudes add up to at most
        1 - p_right: so at most 4 (A_MAX + 1).  Each squashing multiplies a gradient by at
        most f'(0) = A S; a linear or convolution layer's input gradient is at most the
        sum of |weights| reaching one input times the largest output gradient; a
        subsampling layer's is its largest |coefficient| times it (each input is in one
        window).  Parameter gradients: (positions visited) x (largest delta) x (largest input).
        """
        p = {k: np.abs(v.astype(np.float64)) for k, v in params.items()}
        slope = A * S
        d6 = 4 * (A_MAX + 1) * slope  # F6's delta
        d5 = float(p["f6.weight"].sum(axis=0).max()) * d6 * slope  # C5's delta
        d4 = float(p["c5.weight"].sum(axis=0).max()) * d5 * slope  # at S4's pre-activation
        d3 = d4 * float(p["s4.weight"].max()) * slope  # at C3's pre-activation
        dense = np.zeros((16, 6, 5, 5))
        f_idx, c_idx = np.array(C3_CONNECTIONS).T
        dense[f_idx, c_idx] = p["c3.weight"]
        d2 = float(dense.sum(axis=(0, 2, 3)).max()) * d3 * slope  # at S2's pre-activation
        d1 = d2 * float(p["s2.weight"].max()) * slope  # at C1's pre-activation
        return {
            "c1.weight": 28 * 28 * d1 * MAX_INPUT, "c1.bias": 28 * 28 * d1,
            "s2.weight": 14 * 14 * d2 * 4 * A_MAX, "s2.bias": 14 * 14 * d2,
            "c3.weight": 10 * 10 * d3 * A_MAX, "c3.bias": 10 * 10 * d3,
            "s4.weight": 5 * 5 * d4 * 4 * A_MAX, "s4.bias": 5 * 5 * d4,
            "c5.weight": d5 * A_MAX, "c5.bias": d5,
            "f6.weight": d6 * A_MAX, "f6.bias": d6,
            "c5.input": A_MAX, "c5.delta": d5, "f6.input": A_MAX, "f6.delta": d6,
        }

    @classmethod
    def onnx_nodes(cls, helper: Any, input: str, output: str) -> list[Any]:
        """The network in standard ONNX operators, the constants (A, S, Table I, the RBF centres) in the graph.

        A subsampling layer is a grouped 2x2 stride-2 convolution whose kernel is its
        coefficient times ones; C3's dense (16, 6, 5, 5) kernel is a 0/1 matrix (the
        table) times its 60 kernels.
        """
        float_type = helper.TensorProto.FLOAT

        def const(name: str, values: Array, dtype: int = float_type) -> Any:
            values = np.asarray(values)
            return helper.make_node("Constant", [], [name], value=helper.make_tensor(
                name, dtype, values.shape, values.reshape(-1).tolist()))

        def squash(x: str, out: str) -> list[Any]:
            return [helper.make_node("Mul", [x, "squash.S"], [f"{out}.Sa"]),
                    helper.make_node("Tanh", [f"{out}.Sa"], [f"{out}.tanh"]),
                    helper.make_node("Mul", [f"{out}.tanh", "squash.A"], [out])]

        def subsample(x: str, layer: str, maps: int, out: str) -> list[Any]:
            return [helper.make_node("Reshape", [f"{layer}.weight", "shape.kernel"], [f"{layer}.coef"]),
                    helper.make_node("Mul", [f"{layer}.coef", f"ones.{maps}"], [f"{layer}.kernel"]),
                    helper.make_node("Conv", [x, f"{layer}.kernel", f"{layer}.bias"], [f"{layer}.sum"],
                                     kernel_shape=[2, 2], strides=[2, 2], group=maps),
                    *squash(f"{layer}.sum", out)]

        table = np.zeros((16 * 6, len(C3_CONNECTIONS)), dtype=np.float32)  # row (C3 map, S2 map) <- kernel k
        for k, (f, c) in enumerate(C3_CONNECTIONS):
            table[6 * f + c, k] = 1.0
        return [
            const("squash.S", np.float32(S)), const("squash.A", np.float32(A)),
            const("shape.kernel", np.array([-1, 1, 1, 1]), helper.TensorProto.INT64),
            const("ones.6", np.ones((6, 1, 2, 2), np.float32)), const("ones.16", np.ones((16, 1, 2, 2), np.float32)),
            const("c3.table", table), const("shape.c3.in", np.array([len(C3_CONNECTIONS), 25]),
                                            helper.TensorProto.INT64),
            const("shape.c3.out", np.array([16, 6, 5, 5]), helper.TensorProto.INT64),
            const("rbf.centres", RBF_CENTRES.astype(np.float32)), const("axis.1", np.array([1]), helper.TensorProto.INT64),
            const("axis.2", np.array([2]), helper.TensorProto.INT64),
            helper.make_node("Conv", [input, "c1.weight", "c1.bias"], ["c1"], kernel_shape=[5, 5]),
            *squash("c1", "h1"),
            *subsample("h1", "s2", 6, "h2"),
            helper.make_node("Reshape", ["c3.weight", "shape.c3.in"], ["c3.kernels"]),
            helper.make_node("MatMul", ["c3.table", "c3.kernels"], ["c3.dense.flat"]),
            helper.make_node("Reshape", ["c3.dense.flat", "shape.c3.out"], ["c3.dense"]),
            helper.make_node("Conv", ["h2", "c3.dense", "c3.bias"], ["c3"], kernel_shape=[5, 5]),
            *squash("c3", "h3"),
            *subsample("h3", "s4", 16, "h4"),
            helper.make_node("Flatten", ["h4"], ["flat"], axis=1),  # C order over (16, 5, 5), as the model
            helper.make_node("Gemm", ["flat", "c5.weight", "c5.bias"], ["c5"], transB=1),
            *squash("c5", "h5"),
            helper.make_node("Gemm", ["h5", "f6.weight", "f6.bias"], ["f6"], transB=1),
            *squash("f6", "h6"),
            helper.make_node("Unsqueeze", ["h6", "axis.1"], ["h6.row"]),  # (N, 1, 84) against (10, 84)
            helper.make_node("Sub", ["h6.row", "rbf.centres"], ["rbf.diff"]),
            helper.make_node("Mul", ["rbf.diff", "rbf.diff"], ["rbf.square"]),
            helper.make_node("ReduceSum", ["rbf.square", "axis.2"], [output], keepdims=0),
        ]
