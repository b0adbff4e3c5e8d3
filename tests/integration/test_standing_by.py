"""More workers than cores on one machine: as many as its cores compute, the others stand by and take over."""

import signal
import time

from procs import coordinator, free_port, identical, params, scrape, trainer_params, worker

CONFIG = ("--train-subset", "6400", "--epochs", "4")


def computing(metrics: dict[str, float]) -> set[str]:
    prefix = "lenet_worker_accepted_shards_total{worker="
    return {k[len(prefix):-1] for k, v in metrics.items() if k.startswith(prefix) and v > 0}


def test_three_workers_on_one_core_take_turns_one_at_a_time_and_a_spare_takes_over(tmp_path, procs):
    port, metrics_port = free_port(), free_port()
    endpoint = f"tcp://127.0.0.1:{port}"
    coord = coordinator(tmp_path, *CONFIG, "--workers", "0", "--bind", endpoint, "--min-workers", "3",
                        "--heartbeat-timeout", "3", "--checkpoint-dir", "off", "--metrics-port", str(metrics_port),
                        "--output", str(tmp_path / "m.npz"))
    procs.append(coord)
    ws = {f"w{i}": worker(tmp_path, endpoint, f"w{i}", "--cores", "1") for i in range(3)}
    procs.extend(ws.values())
    coord.wait_for("training:")
    assert "2 workers on 1 core: 1 at a time compute" in coord.log()  # said once, at the second
    deadline, busy = time.monotonic() + 30, set()
    while not busy:
        assert time.monotonic() < deadline, coord.log()
        busy = computing(scrape(metrics_port))
        time.sleep(0.1)
    assert len(busy) == 1, busy  # one computes; the two others stand by
    (first,) = busy
    ws[first].signal(signal.SIGKILL)
    deadline = time.monotonic() + 60
    while coord.popen.poll() is None and len(busy) < 2:
        assert time.monotonic() < deadline, coord.log()
        try:
            busy = computing(scrape(metrics_port)) | busy
        except OSError:  # the run ended: asserted below
            break
        time.sleep(0.1)
    assert len(busy) >= 2, f"no spare took over from {first}:\n{coord.log()[-3000:]}"
    assert coord.wait() == 0, coord.log()
    assert identical(params(tmp_path / "m.npz"), trainer_params(tmp_path, *CONFIG))
