"""The one type of parameters and gradients: a dict of named arrays.

Parameters, gradients and optimizer state are all `dict[str, ndarray]` with the
same keys (the model's `PARAM_SHAPES`, lenet/architecture.py), so they add, scale and
travel as plain data.
"""

import numpy as np

Params = dict[str, np.ndarray]
