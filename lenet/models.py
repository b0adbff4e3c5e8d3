"""The registry of models: name -> class.  A model is its own file plus one line here.

The name is what `--model` (env LENET_MODEL) selects, what the wire protocol's
Register and Params carry and what model files and checkpoints record; the class
is a `lenet.architecture.Model`.
"""

from __future__ import annotations

from lenet.architecture import Model
from lenet.lenet1998 import LeNet5_1998
from lenet.model import LeNet5

MODELS: dict[str, type[Model]] = {"lenet5": LeNet5, "lenet5-1998": LeNet5_1998}
DEFAULT_MODEL = "lenet5"


def get_model(name: str) -> type[Model]:
    """The model class registered as `name`; ValueError (one line, naming the choices) for another name."""
    try:
        return MODELS[name]
    except (KeyError, TypeError):
        raise ValueError(f"unknown model {name!r:.40}: choose one of {', '.join(MODELS)}") from None
