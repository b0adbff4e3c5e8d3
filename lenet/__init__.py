"""LeNet-5 in NumPy: model, data, optimizers and the single-process reference trainer."""

from lenet.model import LeNet5

__all__ = ["LeNet5"]
