"""Hand-written forward and backward passes for the layers of LeNet-5.

Every layer is a pair of functions in the CS231n style:

    out, cache = layer_forward(x, ...)
    dx, (dparams...) = layer_backward(dout, cache)

Image tensors are (C, N, H, W) inside this module, channels outermost.  With that
layout the im2col matrix of a convolution is built from KH*KW copies whose inner
runs are whole image rows, its row order (c, kh, kw) is exactly PyTorch's weight
layout (F, C, KH, KW) flattened, and the product `W @ cols` lands directly in
(F, N, H, W) for the next layer: no transposes on the hot path.  Weights keep
PyTorch's layouts (conv: (F, C, KH, KW), linear: (out, in)).  All functions work in
the float dtype they are given (float32 in training, float64 in gradient checks).
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided

Array = np.ndarray


# --------------------------------------------------------------------------- convolution


def pad_hw(x: Array, pad: int) -> Array:
    """Zero-pad the two spatial axes of a (C, N, H, W) tensor by `pad` on every side."""
    if pad == 0:
        return x
    c, n, h, w = x.shape
    out = np.zeros((c, n, h + 2 * pad, w + 2 * pad), dtype=x.dtype)
    out[:, :, pad : pad + h, pad : pad + w] = x
    return out


def im2col(xp: Array, kh: int, kw: int) -> Array:
    """Receptive fields of a padded tensor as columns: (C, N, H, W) -> (C*KH*KW, N*OH*OW).

    Row (c, i, j) holds input channel c shifted by kernel offset (i, j); the loop
    runs over the KH*KW offsets (25 for LeNet), each a vectorised copy.
    """
    c, n, h, w = xp.shape
    oh, ow = h - kh + 1, w - kw + 1
    cols = np.empty((c, kh, kw, n, oh, ow), dtype=xp.dtype)
    for i in range(kh):
        for j in range(kw):
            cols[:, i, j] = xp[:, :, i : i + oh, j : j + ow]
    return cols.reshape(c * kh * kw, n * oh * ow)


def col2im_wide(dcols: Array, xp_shape: tuple[int, ...], kh: int, kw: int) -> Array:
    """Adjoint of `im2col`, for column gradients laid out on the *wide* output grid.

    dcols: (C*KH*KW, N*OH*W), where each output row is W (the input width) long and
    its last W-OW entries are zero.  Returns (C, N, H, W).  On the wide grid the
    patch gradient of kernel offset (i, j) lands on the flattened input as one
    contiguous run of OH*W values per sample, starting at i*W + j: each of the
    KH*KW scatter-adds moves long runs instead of rows of OW values.  The zero
    entries that run past a row's end add nothing wherever they land; `slack`
    keeps the last sample's inside the buffer.
    """
    c, n, h, w = xp_shape
    oh = h - kh + 1
    d = dcols.reshape(c, kh, kw, n, oh * w)
    slack = kw
    flat = np.zeros((c, n * h * w + slack), dtype=dcols.dtype)
    s_c, s_x = flat.strides
    for i in range(kh):
        for j in range(kw):
            dst = as_strided(flat[:, i * w + j :], shape=(c, n, oh * w), strides=(s_c, h * w * s_x, s_x))
            dst += d[:, i, j]
    return flat[:, : n * h * w].reshape(xp_shape)


def conv_forward(x: Array, w: Array, b: Array, pad: int) -> tuple[Array, tuple]:
    """Stride-1 convolution (cross-correlation, as in PyTorch).

    x: (C, N, H, W)   w: (F, C, KH, KW)   b: (F,)
    out: (F, N, H + 2*pad - KH + 1, W + 2*pad - KW + 1)
    """
    f, c, kh, kw = w.shape
    xp = pad_hw(x, pad)
    _, n, hp, wp = xp.shape
    oh, ow = hp - kh + 1, wp - kw + 1
    cols = im2col(xp, kh, kw)  # (C*KH*KW, N*OH*OW)
    wmat = w.reshape(f, c * kh * kw)
    out = wmat @ cols  # (F, N*OH*OW)
    out += b[:, None]
    return out.reshape(f, n, oh, ow), (cols, wmat, xp.shape, w.shape, pad)


def conv_backward(dout: Array, cache: tuple, need_dx: bool = True) -> tuple[Array | None, Array, Array]:
    """Gradients of `conv_forward`.  dout: (F, N, OH, OW) -> (dx or None, dw, db).

    `need_dx=False` skips the input gradient, which the first layer never needs.
    """
    cols, wmat, xp_shape, w_shape, pad = cache
    dout2 = dout.reshape(w_shape[0], -1)  # (F, N*OH*OW)
    dw = (dout2 @ cols.T).reshape(w_shape)
    db = dout2.sum(axis=1)
    if not need_dx:
        return None, dw, db
    f, n, oh, ow = dout.shape
    wide = np.zeros((f, n, oh, xp_shape[3]), dtype=dout.dtype)  # output rows padded to the input width
    wide[..., :ow] = dout
    dxp = col2im_wide(wmat.T @ wide.reshape(f, -1), xp_shape, w_shape[2], w_shape[3])
    h, w = xp_shape[2] - 2 * pad, xp_shape[3] - 2 * pad
    return dxp[:, :, pad : pad + h, pad : pad + w], dw, db


# --------------------------------------------------------------------------- pooling


def _quadrants(x: Array) -> tuple[Array, Array, Array, Array]:
    """The four elements of every 2x2 window as strided views, in row-major order."""
    return x[:, :, 0::2, 0::2], x[:, :, 0::2, 1::2], x[:, :, 1::2, 0::2], x[:, :, 1::2, 1::2]


def maxpool_forward(x: Array) -> tuple[Array, tuple]:
    """2x2 max pooling with stride 2.  x: (C, N, H, W) with H, W even -> (C, N, H/2, W/2)."""
    if x.shape[2] % 2 or x.shape[3] % 2:
        raise ValueError(f"maxpool needs an even spatial size, got {x.shape[2]}x{x.shape[3]}")
    a, b, c, d = _quadrants(x)
    out = np.maximum(np.maximum(a, b), np.maximum(c, d))
    return out, (x, out)


def maxpool_backward(dout: Array, cache: tuple) -> Array:
    """Route each window's gradient to exactly one maximum.

    Ties are common (blank background, ReLU zeros).  Sending the gradient to every
    tied element would multiply it; it goes to the first maximum in row-major order,
    which is also what PyTorch does.
    """
    x, out = cache
    a, b, c, _ = _quadrants(x)
    dx = np.empty_like(x)
    da, db, dc, dd = _quadrants(dx)
    # Multiplying by a boolean mask writes each strided quadrant in one pass.
    taken = a == out
    np.multiply(dout, taken, out=da)
    hit = b == out
    hit &= ~taken
    np.multiply(dout, hit, out=db)
    taken |= hit
    hit = c == out
    hit &= ~taken
    np.multiply(dout, hit, out=dc)
    taken |= hit
    np.multiply(dout, ~taken, out=dd)  # no earlier maximum: the last element is the one
    return dx


# --------------------------------------------------------------------------- activations, linear


def relu_forward(x: Array) -> tuple[Array, Array]:
    """Elementwise max(x, 0); the cache is the output, whose sign is the mask."""
    out = np.maximum(x, 0)
    return out, out


def relu_backward(dout: Array, cache: Array) -> Array:
    """Pass the gradient where the input was positive (the subgradient at 0 is 0)."""
    return np.where(cache > 0, dout, 0)


def linear_forward(x: Array, w: Array, b: Array) -> tuple[Array, tuple]:
    """x: (N, D)   w: (M, D)   b: (M,)   ->   (N, M)."""
    out = x @ w.T
    out += b
    return out, (x, w)


def linear_backward(dout: Array, cache: tuple) -> tuple[Array, Array, Array]:
    """dout: (N, M) -> dx (N, D), dw (M, D), db (M,)."""
    x, w = cache
    return dout @ w, dout.T @ x, dout.sum(axis=0)


# --------------------------------------------------------------------------- loss


def softmax_cross_entropy(logits: Array, y: Array) -> tuple[Array, Array, Array]:
    """Summed softmax cross-entropy, computed stably through log-sum-exp.

    logits: (N, K), y: int (N,).  Returns (loss_sum, per-sample correctness (N,) bool,
    dlogits (N, K)), where dlogits is the gradient of the *sum*: callers scale it.
    Summing rather than averaging lets shard gradients add up exactly to a batch.
    """
    n = logits.shape[0]
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    sum_exp = exp.sum(axis=1, keepdims=True)
    log_probs = shifted - np.log(sum_exp)
    rows = np.arange(n)
    loss_sum = -log_probs[rows, y].sum(dtype=np.float64)
    dlogits = exp / sum_exp
    dlogits[rows, y] -= 1
    correct = logits.argmax(axis=1) == y
    return np.asarray(loss_sum), correct, dlogits
