"""Nothing that crosses a socket or comes from disk is ever unpickled."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PRODUCT = ["lenet", "coordinator", "worker"]
FORBIDDEN = re.compile(r"\bpickle\b|cPickle|recv_pyobj|send_pyobj|allow_pickle\s*=\s*True|\bshelve\b|\bmarshal\b")


def test_product_never_uses_pickle():
    offenders = [f"{path.relative_to(ROOT)}:{n}: {line.strip()}"
                 for package in PRODUCT for path in sorted((ROOT / package).rglob("*.py"))
                 for n, line in enumerate(path.read_text().splitlines(), 1) if FORBIDDEN.search(line)]
    assert offenders == []


def test_the_check_would_catch_them():
    for line in ("import pickle", "sock.recv_pyobj()", "np.load(p, allow_pickle=True)"):
        assert FORBIDDEN.search(line)
