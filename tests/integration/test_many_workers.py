"""64 local workers at the default shard count, each with a core of its own: every one of them gets work, and the
result is a 1-worker run's."""

import time

from procs import coordinator, free_port, identical, params, scrape

# The default batch (128) and shards (64); 2 epochs of 15 steps, so each run records an epoch history.
CONFIG = ("--train-subset", "1920", "--epochs", "2", "--checkpoint-dir", "off")


def test_64_workers_all_get_work_and_change_nothing(tmp_path, procs, mnist_dir):
    one = coordinator(tmp_path, "--workers", "1", "--output", str(tmp_path / "one.npz"), *CONFIG, log_name="one.log")
    procs.append(one)
    assert one.wait() == 0, one.log()[-3000:]

    port = free_port()
    # LENET_CORES (the workers' --cores): each says its machine has room for 64, as 64 workers on as many
    # machines would; on one machine the others would stand by (test_standing_by.py).
    many = coordinator(tmp_path, "--workers", "64", "--metrics-port", str(port), "--output", str(tmp_path / "m.npz"),
                       *CONFIG, log_name="many.log", LENET_CORES="64")
    procs.append(many)
    many.wait_for("training:", timeout=240)  # 64 processes start on however few cores there are
    accepted: dict[str, float] = {}  # per worker, at its largest: a worker's series goes when it leaves
    while many.popen.poll() is None:
        try:
            for key, value in scrape(port).items():
                if key.startswith("lenet_worker_accepted_shards_total{"):
                    accepted[key] = max(value, accepted.get(key, 0.0))
        except OSError:
            pass  # between the last step and the exit
        time.sleep(0.2)
    assert many.wait() == 0, many.log()[-3000:]
    assert "64 workers" in many.log()
    assert len(accepted) == 64 and min(accepted.values()) > 0, sorted(accepted.items(), key=lambda kv: kv[1])[:5]
    assert identical(params(tmp_path / "m.npz"), params(tmp_path / "one.npz"))
    # Losses are added exactly (math.fsum of per-sample losses): the history is the same floats too.
    from lenet.train import load_model

    history = [load_model(tmp_path / name)[1]["history"] for name in ("m.npz", "one.npz")]
    assert history[0] == history[1] and len(history[0]) == 2
