"""Hand-written forward and backward passes for the layers of LeNet-5.

Every layer is a pair of functions in the CS231n style:

    out, cache = layer_forward(x, ...)
    dx, (dparams...) = layer_backward(dout, cache)

Image tensors are (N, C, H, W), as in PyTorch.  A convolution's im2col matrix is
(N, C*KH*KW + 1, OH*OW): one (K + 1, P) block per sample, rows in (c, kh, kw) order,
which is PyTorch's weight layout (F, C, KH, KW) flattened, plus a row of ones for
the bias.  Every product is then one small GEMM per sample, (F, K + 1) @ (K + 1, P),
never one product over the whole batch.  Two reasons:

- Speed: LeNet's products are skinny (6 or 16 output channels); a per-sample
  product's operands stay in L1/L2, and measured here the per-sample products run
  up to 2-3x faster than one batch-wide product of the same FLOPs.
- Exactness: a BLAS picks its kernel (and so the order of the additions, and the
  last bits) by matrix size.  With one product per sample, a sample's activations
  and its gradient contributions do not depend on which other samples shared the
  call; weight and bias gradients are summed from per-sample partials in a fixed
  order (`segment_sums`), per shard when asked.  This is what lets
  `LeNet5.stacked_shard_sums` compute many shards in one pass, each bit for bit as
  if alone.

The linear layers take an optional leading stack axis, (S, N, D): one product and
one gradient per stack entry, of the same shapes as for that entry alone (training
stacks single samples, (N, 1, D)).  Weights keep PyTorch's layouts (conv: (F, C, KH, KW), linear: (out, in)).
All functions work in the float dtype they are given (float32 in training,
float64 in gradient checks).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.lib.stride_tricks import as_strided

Array = np.ndarray


def runs(sizes: Sequence[int]) -> list[tuple[int, int, int]]:
    """Runs of consecutive equal segment sizes: (first sample, number of segments, segment size)."""
    out: list[tuple[int, int, int]] = []
    lo = 0
    for size in sizes:
        if out and out[-1][2] == size:
            first, count, _ = out[-1]
            out[-1] = (first, count + 1, size)
        else:
            out.append((lo, 1, size))
        lo += size
    return out


def segment_sums(partials: Array, sizes: Sequence[int] | None) -> Array:
    """Per-sample partials (N, ...) added up within each of consecutive segments.

    `sizes`: the segments' lengths (summing to N), or None for the whole batch (then
    the result has no segment axis).  Equal segments side by side are summed in one
    call over a (count, size, ...) view; a segment's sum is that of its own
    (1, size, ...) view, whatever surrounds it (the grouping tests in
    tests/unit/test_model.py check this).  np.add.reduceat, the obvious tool, walks
    the sample axis innermost here and was 4x slower.
    """
    if sizes is None:
        return partials.reshape(1, *partials.shape).sum(axis=1)[0]
    out = np.empty((len(sizes), *partials.shape[1:]), dtype=partials.dtype)
    s = 0
    for lo, count, size in runs(sizes):
        out[s : s + count] = partials[lo : lo + count * size].reshape(count, size, *partials.shape[1:]).sum(axis=1)
        s += count
    return out


# --------------------------------------------------------------------------- convolution


def pad_hw(x: Array, pad: int) -> Array:
    """Zero-pad the two spatial axes of a (N, C, H, W) tensor by `pad` on every side."""
    if pad == 0:
        return x
    n, c, h, w = x.shape
    out = np.zeros((n, c, h + 2 * pad, w + 2 * pad), dtype=x.dtype)
    out[:, :, pad : pad + h, pad : pad + w] = x
    return out


def im2col(xp: Array, kh: int, kw: int) -> Array:
    """Receptive fields of a padded tensor, per sample, and a row of ones:
    (N, C, H, W) -> (N, C*KH*KW + 1, OH*OW).

    Row (c, i, j) of a sample's block holds input channel c shifted by kernel offset
    (i, j); the last row is ones, so that the bias rides in the product (forward)
    and its gradient comes out of the weight-gradient product (backward), with no
    separate pass over the output.  Two copies, each one NumPy call: first the KW
    column shifts of every input row (OW values each), in which the rows of
    offset (i, j) are then one contiguous run of OH*OW values.  Copying the windows
    directly moves runs of only OW values and measured 40 % slower (9 vs 6.4
    us/sample for conv2).
    """
    n, c, h, w = xp.shape
    oh, ow = h - kh + 1, w - kw + 1
    k = c * kh * kw
    s_n, s_c, s_h, s_w = xp.strides
    shifts = np.ascontiguousarray(as_strided(xp, shape=(n, c, kw, h, ow), strides=(s_n, s_c, s_w, s_h, s_w),
                                             writeable=False))  # (N, C, KW, H, OW)
    t_n, t_c, t_j, t_h, t_x = shifts.strides
    windows = as_strided(shifts, shape=(n, c, kh, kw, oh * ow), strides=(t_n, t_c, t_h, t_j, t_x), writeable=False)
    cols = np.empty((n, k + 1, oh * ow), dtype=xp.dtype)
    cols[:, :k].reshape(n, c, kh, kw, oh * ow)[...] = windows
    cols[:, k] = 1
    return cols


def conv_input_grad(dout: Array, w: Array, xp_shape: tuple[int, ...]) -> Array:
    """Gradient of a stride-1 convolution with respect to its padded input, as one product per sample.

    dout: (N, F, OH, OW)   w: (F, C, KH, KW)   ->   (N, C, H, W), H = OH + KH - 1.

    Instead of the KH*KW-row column gradient and its KH*KW scatter-adds (col2im), the
    kernel's column offsets j are folded into the product: dout is laid on the *wide*
    grid (rows W long, zero past OW) with KW-1 zeros on each side, D holds its KW
    shifts (rows (f, j), one contiguous run each), and E = W' @ D, W' the kernel with
    flipped columns as a (C*KH, F*KW) matrix, holds for each (c, i) the input
    gradient of kernel row i, to be added at row offset i: KH adds instead of KH*KW.
    Wide-grid entries past a row's end are exact zeros, so runs that wrap into the
    next row (or image) add nothing.
    """
    n, f, oh, ow = dout.shape
    _, c, kh, kw = w.shape
    _, _, h, wd = xp_shape
    q = oh * wd  # the output on the wide grid
    length = q + kw - 1  # a shifted run of D and of E
    dpad = np.zeros((n, f, length + kw - 1), dtype=dout.dtype)
    dpad[:, :, kw - 1 : kw - 1 + q].reshape(n, f, oh, wd)[..., :ow] = dout
    s_n, s_f, s_x = dpad.strides
    shifts = as_strided(dpad, shape=(n, f, kw, length), strides=(s_n, s_f, s_x, s_x), writeable=False)
    d = np.ascontiguousarray(shifts).reshape(n, f * kw, length)  # row (f, j'): dout shifted by kw-1-j'
    wflip = np.ascontiguousarray(w[:, :, :, ::-1].transpose(1, 2, 0, 3)).reshape(c * kh, f * kw)
    e = np.matmul(wflip, d).reshape(n, c, kh, length)  # (N, C*KH, length)
    flat = np.zeros(n * c * h * wd + length, dtype=dout.dtype)  # slack: the last image's tail run
    (s_x,) = flat.strides
    for i in range(kh):
        dst = as_strided(flat[i * wd :], shape=(n, c, length), strides=(c * h * wd * s_x, h * wd * s_x, s_x))
        dst += e[:, :, i]
    return flat[: n * c * h * wd].reshape(n, c, h, wd)


def conv_forward(x: Array, w: Array, b: Array, pad: int) -> tuple[Array, tuple]:
    """Stride-1 convolution (cross-correlation, as in PyTorch), one product per sample.

    x: (N, C, H, W)   w: (F, C, KH, KW)   b: (F,)
    out: (N, F, H + 2*pad - KH + 1, W + 2*pad - KW + 1)
    """
    f, c, kh, kw = w.shape
    xp = pad_hw(x, pad)
    n, _, hp, wp = xp.shape
    oh, ow = hp - kh + 1, wp - kw + 1
    cols = im2col(xp, kh, kw)  # (N, K + 1, P)
    wb = np.concatenate([w.reshape(f, c * kh * kw), b[:, None]], axis=1)  # (F, K + 1): weights, then bias
    out = np.matmul(wb, cols)  # (N, F, P): (F, K + 1) @ (K + 1, P) for each sample
    return out.reshape(n, f, oh, ow), (cols, w, xp.shape, pad)


def conv_backward(dout: Array, cache: tuple, sizes: Sequence[int] | None = None) -> tuple[Array, Array, Array]:
    """Gradients of `conv_forward`.  dout: (N, F, OH, OW) -> (dx (N, C, H, W), dw, db).

    dw, db: summed over the batch, (F, C, KH, KW) and (F,); with `sizes` (the lengths
    of S consecutive segments of samples), one sum per segment, (S, F, C, KH, KW) and (S, F).
    """
    cols, w, xp_shape, pad = cache
    n, f, oh, ow = dout.shape
    # (K + 1, P) @ (P, F) per sample (of the two orientations the faster one here):
    # weight gradients in rows 0..K-1, bias gradient in row K (the row of ones).
    dwb = segment_sums(np.matmul(cols, dout.reshape(n, f, oh * ow).transpose(0, 2, 1)), sizes)  # (..., K + 1, F)
    dwb = np.ascontiguousarray(np.swapaxes(dwb, -1, -2))  # (..., F, K + 1)
    dw, db = dwb[..., :-1].reshape(dwb.shape[:-2] + w.shape), np.ascontiguousarray(dwb[..., -1])
    dxp = conv_input_grad(dout, w, xp_shape)
    h, wd = xp_shape[2] - 2 * pad, xp_shape[3] - 2 * pad
    return dxp[:, :, pad : pad + h, pad : pad + wd], dw, db


def conv_pool_forward(x: Array, w: Array, b: Array, pad: int) -> tuple[Array, tuple]:
    """`conv_forward` then `maxpool_forward`, fused: the same function, computed faster.

    x: (N, C, H, W)   w: (F, C, KH, KW)   b: (F,)   ->   (N, F, OH/2, OW/2)

    The im2col columns are ordered by position inside the pooling window first,
    (qy, qx, y', x'), so each sample's convolution output is four contiguous
    quarter-size blocks, one per window position: pooling (and its backward pass)
    works on contiguous arrays instead of stride-2 views.  For conv1 (one input
    channel) this measured ~3 % faster per training step than conv then pool.
    """
    f, c, kh, kw = w.shape
    xp = pad_hw(x, pad)
    n, _, hp, wp = xp.shape
    oh, ow = hp - kh + 1, wp - kw + 1
    if oh % 2 or ow % 2:
        raise ValueError(f"maxpool needs an even spatial size, got {oh}x{ow}")
    ph, pw = oh // 2, ow // 2
    k = c * kh * kw
    s_n, s_c, s_h, s_w = xp.strides
    windows = as_strided(xp, shape=(n, c, kh, kw, 2, 2, ph, pw),
                         strides=(s_n, s_c, s_h, s_w, s_h, s_w, 2 * s_h, 2 * s_w), writeable=False)
    cols = np.empty((n, k + 1, oh * ow), dtype=xp.dtype)
    cols[:, :k].reshape(n, c, kh, kw, 2, 2, ph, pw)[...] = windows
    cols[:, k] = 1  # the bias row, as in im2col
    wb = np.concatenate([w.reshape(f, k), b[:, None]], axis=1)
    conv = np.matmul(wb, cols).reshape(n, f, 4, ph * pw)  # window positions (0,0), (0,1), (1,0), (1,1)
    out = np.maximum(np.maximum(conv[:, :, 0], conv[:, :, 1]), np.maximum(conv[:, :, 2], conv[:, :, 3]))
    return out.reshape(n, f, ph, pw), (cols, w, conv, out)


def conv_pool_backward(dout: Array, cache: tuple, sizes: Sequence[int] | None = None) -> tuple[Array, Array]:
    """Weight and bias gradients of `conv_pool_forward`: dout (N, F, OH/2, OW/2) -> (dw, db) as `conv_backward`.

    No input gradient: the model fuses only its first layer, whose input is the
    images (for conv2 the stride-2 gathers cost more than the pooling saves).
    Each window's gradient goes to its first maximum in row-major order, as in
    `maxpool_backward`.
    """
    cols, w, conv, out = cache
    n, f = dout.shape[:2]
    dconv = np.empty_like(conv)  # (N, F, 4, PH*PW)
    rest = dout.reshape(n, f, -1).copy()  # the gradient not yet routed: zero once a window's maximum took it
    for q in range(3):
        np.multiply(rest, conv[:, :, q] == out, out=dconv[:, :, q])
        rest -= dconv[:, :, q]
    dconv[:, :, 3] = rest
    dwb = segment_sums(np.matmul(cols, dconv.reshape(n, f, -1).transpose(0, 2, 1)), sizes)
    dwb = np.ascontiguousarray(np.swapaxes(dwb, -1, -2))
    return dwb[..., :-1].reshape(dwb.shape[:-2] + w.shape), np.ascontiguousarray(dwb[..., -1])


# --------------------------------------------------------------------------- pooling


def _quadrants(x: Array) -> tuple[Array, Array, Array, Array]:
    """The four elements of every 2x2 window as strided views, in row-major order."""
    return x[:, :, 0::2, 0::2], x[:, :, 0::2, 1::2], x[:, :, 1::2, 0::2], x[:, :, 1::2, 1::2]


def maxpool_forward(x: Array) -> tuple[Array, tuple]:
    """2x2 max pooling with stride 2.  x: (N, C, H, W) with H, W even -> (N, C, H/2, W/2)."""
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
    """Pass the gradient where the input was positive (the subgradient at 0 is 0).

    A multiplication by the mask: twice as fast here as np.where.
    """
    return dout * (cache > 0)


def linear_forward(x: Array, w: Array, b: Array) -> tuple[Array, tuple]:
    """x: (N, D) or a stack (S, N, D)   w: (M, D)   b: (M,)   ->   (N, M) or (S, N, M).

    A stack is S independent products, each of the shape it would have alone.
    """
    out = x @ w.T
    out += b
    return out, (x, w)


def linear_input_grad(dout: Array, cache: tuple) -> Array:
    """dout: (N, M) or a stack (S, N, M) -> the input gradient dx, (N, D) or (S, N, D).

    The weight and bias gradients are not taken here: a model keeps each sample's
    factors (its input x and dout) and `lenet.architecture.linear_grads` multiplies
    them out once over the whole batch.
    """
    _, w = cache
    return dout @ w


# --------------------------------------------------------------------------- loss


def softmax_cross_entropy(logits: Array, y: Array) -> tuple[Array, Array, Array]:
    """Per-sample softmax cross-entropy, computed stably through log-sum-exp.

    logits: (N, K), y: int (N,).  Returns (losses (N,), correctness (N,) bool,
    dlogits (N, K)), in the logits' dtype, where dlogits is the gradient of the
    losses' *sum*: callers scale it.  Summing rather than averaging lets shard
    gradients add up exactly to a batch; per-sample losses let callers add them up
    exactly (math.fsum), however the batch was grouped.
    """
    n = logits.shape[0]
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    sum_exp = exp.sum(axis=1, keepdims=True)
    log_probs = shifted - np.log(sum_exp)
    rows = np.arange(n)
    losses = -log_probs[rows, y]
    dlogits = exp / sum_exp
    dlogits[rows, y] -= 1
    correct = logits.argmax(axis=1) == y
    return losses, correct, dlogits
