"""The conformance probe: a fixed computation whose exact bits tell whether two machines agree.

Bit-identical runs need every worker to compute exactly what the coordinator
would.  A worker on another CPU kernel, BLAS or NumPy build can be right to 1e-6
and still differ in the last bits, which silently changes a run.  So every worker
computes this probe (fixed parameters, a fixed two-shard unit of synthetic
images, `lenet.shards.unit_sums`: the very code that computes tasks) and sends its
digest when it registers; the coordinator admits it only if the digest equals
its own.  `python -m worker --self-test` prints the digest, to compare machines
before a run.  The probe runs the run's model: each model has its own digest.
"""

from __future__ import annotations

import hashlib

import numpy as np

from lenet.architecture import Model
from lenet.models import DEFAULT_MODEL, get_model
from lenet.shards import unit_sums

PROBE_SEED = 5  # fixes the parameters, the images and the labels
PROBE_SIZES = (7, 9)  # two shards of odd sizes: the tree's addition is part of the probe


def probe_digest(model: type[Model] | None = None) -> str:
    """SHA-256 (hex) of the probe's losses, correct count, gradient and factor bytes for `model` (default:
    the default model)."""
    model = model or get_model(DEFAULT_MODEL)
    rng = np.random.default_rng(PROBE_SEED)  # PCG64: the same stream on every platform
    n = sum(PROBE_SIZES)
    pixels = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    sums = unit_sums(model(seed=PROBE_SEED), pixels, labels, PROBE_SIZES)
    h = hashlib.sha256(np.ascontiguousarray(sums.losses, dtype="<f4").tobytes() + sums.correct.to_bytes(8, "little"))
    for arrays in (sums.grads, sums.factors):
        for name in sorted(arrays):
            h.update(np.ascontiguousarray(arrays[name], dtype="<f4").tobytes())
    return h.hexdigest()
