"""Every user mistake: one line naming the problem, a documented status, no traceback."""

import os
import socket
import subprocess
import sys

import pytest

from procs import env


@pytest.fixture(scope="module")
def busy_port():
    """A loopback port something else is listening on."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    yield s.getsockname()[1]
    s.close()


def run(module, args, extra_env=None, tmp_path=None):
    proc = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=120,
                          env=env(**(extra_env or {})), cwd=tmp_path)
    return proc.returncode, proc.stderr


CASES = [
    ("coordinator", ["--epochs", "-1"], {}, 2, "epochs must be >= 1, got -1"),
    ("coordinator", ["--batch-size", "abc"], {}, 2, "argument --batch-size: invalid int value: 'abc'"),
    ("coordinator", ["--lr", "nan"], {}, 2, "learning rate must be a positive number, got nan"),
    ("coordinator", ["--workers", "-2"], {}, 2, "--workers must be >= 0, got -2"),
    ("coordinator", ["--shards", "0"], {}, 2, "shards must be >= 1, got 0"),
    ("coordinator", ["--bind", "foo"], {}, 2, "--bind must be a ZeroMQ endpoint"),
    ("coordinator", ["--metrics-port", "70000"], {}, 2, "--metrics-port must be 0-65535, got 70000"),
    ("coordinator", [], {"LENET_EPOCHS": "five"}, 2, "environment variable LENET_EPOCHS='five' is not valid"),
    ("coordinator", ["--resume", "--checkpoint-dir", "off"], {}, 2, "--resume needs a --checkpoint-dir"),
    ("coordinator", ["--data-dir", "/nonexistent/mnist"], {}, 3, "--data-dir /nonexistent/mnist: not a directory"),
    ("coordinator", ["--bind", "tcp://nosuchinterface0:5555", "--workers", "0"], {}, 5,
     "cannot bind tcp://nosuchinterface0:5555"),
    ("coordinator", ["--bind", "tcp://0.0.0.0:*", "--workers", "0"], {}, 2,
     "refusing to listen on tcp://0.0.0.0:* without CURVE"),
    ("coordinator", ["--checkpoint-key", "/nonexistent/key"], {}, 2, "cannot read checkpoint key /nonexistent/key"),
    ("coordinator", ["--batch-size", "100000"], {}, 2,
     "--batch-size 100000 is larger than the 60000 training images: use at most 60000"),
    ("coordinator", ["--batch-size", "60000", "--shards", "1"], {}, 2,
     "makes shards of 60000 samples, more than one message holds (5113): pass --shards 12 or more"),
    ("coordinator", ["--init-from", "/nonexistent/model.npz"], {}, 4, "/nonexistent/model.npz: no such file"),
    ("worker", ["--connect", "foo"], {}, 2, "--connect must be a ZeroMQ endpoint"),
    ("worker", ["--heartbeat-interval", "0"], {}, 2, "heartbeat interval must be > 0, got 0.0"),
    ("worker", ["--relay", "--listen", "5556"], {}, 2, "--listen must be a ZeroMQ endpoint"),
    ("worker", ["--relay", "--listen", "tcp://nosuchinterface0:5556", "--insecure"], {}, 5,
     "cannot bind tcp://nosuchinterface0:5556"),
    ("worker", ["--relay", "--curve-secret-key", "k", "--curve-server-key", "s"], {}, 2,
     "a relay with CURVE needs --curve-authorized-dir too"),
    ("worker", [], {"LENET_RELAY": "maybe"}, 2, "environment variable LENET_RELAY='maybe' is not valid"),
    ("lenet.train", ["--shards", "0"], {}, 2, "--shards must be >= 1, got 0"),
    ("coordinator", ["--weight-decay", "nan"], {}, 2, "weight decay must be a finite number >= 0, got nan"),
    ("coordinator", ["--weight-decay", "-1"], {}, 2, "weight decay must be a finite number >= 0, got -1.0"),
    ("coordinator", ["--weight-decay", "inf"], {}, 2, "weight decay must be a finite number >= 0, got inf"),
    ("coordinator", ["--momentum", "nan"], {}, 2, "momentum must be in [0, 1), got nan"),
    ("coordinator", ["--lr", "-0.1"], {}, 2, "learning rate must be a positive number, got -0.1"),
    ("coordinator", ["--heartbeat-timeout", "inf"], {}, 2, "timeouts must be > 0, got inf"),
    ("coordinator", ["--verify-fraction", "nan"], {}, 2, "verify fraction must be between 0 and 1, got nan"),
    ("lenet.train", ["--weight-decay", "nan"], {}, 2, "weight decay must be a finite number >= 0, got nan"),
    ("lenet.train", ["--momentum", "-0.5"], {}, 2, "momentum must be in [0, 1), got -0.5"),
]


@pytest.mark.parametrize("module, args, extra_env, status, message", CASES,
                         ids=[f"{c[0]} {' '.join(c[1]) or c[2]}" for c in CASES])
def test_user_errors(module, args, extra_env, status, message, mnist_dir, tmp_path):
    code, err = run(module, ["--metrics-port", "0", *args] if module == "coordinator" else args, extra_env,
                    tmp_path)
    assert code == status, err
    assert message in err
    assert "Traceback" not in err


def test_ports_in_use(busy_port, mnist_dir, tmp_path):
    code, err = run("coordinator", ["--metrics-port", "0", "--workers", "0", "--bind", f"tcp://127.0.0.1:{busy_port}"],
                    tmp_path=tmp_path)
    assert code == 5 and f"cannot bind tcp://127.0.0.1:{busy_port}: Address already in use" in err, err
    code, err = run("coordinator", ["--metrics-port", str(busy_port)], tmp_path=tmp_path)
    assert code == 5 and f"cannot serve metrics on 127.0.0.1:{busy_port}: Address already in use" in err, err
    assert "Traceback" not in err


def test_unwritable_checkpoint_directory_fails_at_start(mnist_dir, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    code, err = run("coordinator", ["--metrics-port", "0", "--checkpoint-dir", str(blocker / "ckpt")],
                    tmp_path=tmp_path)
    assert code == 4, err
    assert f"checkpoint directory {blocker / 'ckpt'} is not writable" in err and "Traceback" not in err


@pytest.mark.parametrize("module", ["coordinator", "lenet.train"])
def test_unusable_output_fails_before_training(module, tmp_path):
    """Checked before the data is even read: the MNIST directory given does not exist, yet the status is 4."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    unwritable = tmp_path / "read-only"
    unwritable.mkdir()
    unwritable.chmod(0o500)
    cases = [([str(blocker / "lenet5.npz")], f"{blocker} is not a directory"),
             ([str(tmp_path)], f"--output {tmp_path} is a directory: give a file name")]
    if os.geteuid() != 0:  # root writes anywhere: that case is the unit tests' (tests/unit/test_output.py)
        cases.append(([str(unwritable / "lenet5.npz")], f"cannot write in {unwritable}: Permission denied"))
    extra = ["--metrics-port", "0", "--checkpoint-dir", "off"] if module == "coordinator" else []
    for output, message in cases:
        code, err = run(module, [*extra, "--data-dir", str(tmp_path / "no-mnist"), "--output", *output],
                        tmp_path=tmp_path)
        assert code == 4, err
        assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


def test_corrupt_mnist_names_the_file(mnist_dir, tmp_path):
    data = tmp_path / "mnist"
    data.mkdir()
    for f in mnist_dir.glob("*.gz"):
        (data / f.name).write_bytes(f.read_bytes())
    labels = data / "train-labels-idx1-ubyte.gz"
    labels.write_bytes(labels.read_bytes()[:-100])
    code, err = run("coordinator", ["--metrics-port", "0", "--data-dir", str(data)], tmp_path=tmp_path)
    assert code == 3 and "train-labels-idx1-ubyte.gz" in err and "Traceback" not in err, err
