"""The product imports only its four runtime dependencies; onnx only in the optional exporter; never torch."""

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ["lenet", "coordinator", "worker"]
RUNTIME = {"numpy", "zmq", "msgpack", "prometheus_client"}
OPTIONAL = {"onnx": {"lenet/export.py"}}  # an extra: imported inside the command that needs it


def imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_product_imports_only_runtime_dependencies():
    offenders = []
    for package in PRODUCT:
        for path in sorted((ROOT / package).rglob("*.py")):
            rel = str(path.relative_to(ROOT))
            for name in imports(path) - set(sys.stdlib_module_names) - RUNTIME - set(PRODUCT):
                if rel not in OPTIONAL.get(name, ()):
                    offenders.append(f"{rel}: {name}")
    assert offenders == []


def test_the_check_would_catch_torch(tmp_path):
    (tmp_path / "m.py").write_text("import torch.nn\nfrom onnxruntime import InferenceSession\n")
    assert imports(tmp_path / "m.py") == {"torch", "onnxruntime"}
