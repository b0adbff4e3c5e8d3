"""LeNet-5 in NumPy: model, data, optimizers and the single-process reference trainer.

`from lenet import LeNet5` loads the model lazily, so that an entry point such as
`python -m lenet.train` can pin BLAS to one thread before NumPy is first imported
(the thread count changes matmul rounding, and results must be reproducible).
"""

__all__ = ["LeNet5"]


def __getattr__(name: str):
    if name == "LeNet5":
        from lenet.model import LeNet5

        return LeNet5
    raise AttributeError(f"module 'lenet' has no attribute {name!r}")
