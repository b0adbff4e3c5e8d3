"""`python -m lenet.export MODEL.npz MODEL.onnx`: the trained network as a standard ONNX graph.

The graph is the one the file's model builds (`Model.onnx_nodes`, the model named in
the file's metadata).  For LeNet-5 it takes exactly what `LeNet5.forward` takes,
float32 `(N, 1, 28, 28)` images already standardised as in training
(`(pixel/255 - 0.1307) / 0.3081`, see `lenet.data.standardize`), and returns the
logits `(N, 10)`; softmax is left to the consumer, as with the model here.  The
layers are the textbook order (conv, ReLU, pool), equal to this project's
pool-then-ReLU (see lenet/model.py), and the parameters are already in the layouts
ONNX uses (PyTorch's).

Needs the optional `onnx` package (`pip install -e '.[export]'`); without it the
command says so on one line (exit status 2).

Exit status: 0 written; 2 bad arguments or onnx missing; 4 model unreadable or
output unwritable.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lenet.architecture import Model
from lenet.params import Params
from lenet.npzfile import write_bytes_atomic
from lenet.status import ExitStatus, UsageError, run_main

# Opset 13 has every operator used here in its current meaning for float32, and is old
# enough (2021) that serving runtimes still in use read it.
OPSET = 13
IR_VERSION = 7  # the IR version that goes with opset 13
INPUT, OUTPUT = "input", "logits"


def _onnx() -> Any:
    try:
        import onnx
    except ImportError:
        raise UsageError("ONNX export needs the onnx package: pip install -e '.[export]' "
                         "(or pip install onnx)") from None
    return onnx


def onnx_model(params: Params, meta: dict[str, Any] | None = None) -> Any:
    """The `onnx.ModelProto` of the model `meta` names (default: LeNet-5) with these parameters (validated by
    onnx's checker)."""
    from lenet.train import file_model

    onnx = _onnx()
    from onnx import TensorProto, helper, numpy_helper

    model: type[Model] = file_model(meta or {}, "the model file")
    graph = helper.make_graph(
        model.onnx_nodes(helper, INPUT, OUTPUT), model.name,
        inputs=[helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["N", *model.INPUT_SHAPE])],
        outputs=[helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["N", 10])],
        initializer=[numpy_helper.from_array(params[name], name) for name in model.PARAM_SHAPES],
        doc_string=f"{model.TITLE} for MNIST. Input: {model.INPUT_DOC}. Output: {model.OUTPUT_DOC}.",
    )
    onnx_proto = helper.make_model(graph, producer_name="lenet5-dp", opset_imports=[helper.make_opsetid("", OPSET)])
    onnx_proto.ir_version = IR_VERSION
    info = {**model.ONNX_PROPS, "model": model.name}
    for key in ("step", "epoch", "test_accuracy"):
        if meta and key in meta:
            info[key] = str(meta[key])
    helper.set_model_props(onnx_proto, info)
    onnx.checker.check_model(onnx_proto, full_check=True)
    return onnx_proto


def write_onnx(path: str | os.PathLike, params: Params, meta: dict[str, Any] | None = None) -> Path:
    """Write the ONNX file atomically, like every file this project writes."""
    return write_bytes_atomic(path, onnx_model(params, meta).SerializeToString())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m lenet.export",
        description="Write a trained LeNet-5 (.npz) as an ONNX graph: input float32 (N, 1, 28, 28) standardised "
                    "images, output logits (N, 10).",
        epilog="Exit status: 0 written, 2 usage (or the onnx package missing), 4 model unreadable or output "
               "unwritable.",
    )
    parser.add_argument("model", help="the trained model, e.g. lenet5.npz")
    parser.add_argument("output", help="the ONNX file to write, e.g. lenet5.onnx")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from lenet.train import file_model, load_model

    args = build_parser().parse_args(argv)
    _onnx()  # say that the extra is missing before reading anything
    params, meta = load_model(args.model)
    path = write_onnx(args.output, params, meta)
    print(f"wrote {path}: input {INPUT!r} {file_model(meta, args.model).INPUT_DOC}, output {OUTPUT!r} (N, 10)")
    return int(ExitStatus.OK)


if __name__ == "__main__":
    sys.exit(run_main(main, "lenet.export"))
