"""32 workers on 2 cores for 300 steps: slow is not dead, and memory stays bounded."""

import time


from procs import coordinator, free_port, scrape

WORKERS, STEPS = 32, 300




def rss_kib(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def wait_for_step(port: int, step: int, proc) -> dict[str, float]:
    while True:
        assert proc.popen.poll() is None, proc.log()[-3000:]
        try:
            m = scrape(port)
        except OSError:
            m = {}
        if m.get("lenet_steps_total", 0) >= step:
            return m
        time.sleep(0.05)


def test_32_workers_oversubscribed(tmp_path, procs, mnist_dir):
    port = free_port()
    coord = coordinator(tmp_path, "--workers", str(WORKERS), "--max-steps", str(STEPS), "--checkpoint-dir", "off",
                        "--metrics-port", str(port), "--output", str(tmp_path / "m.npz"))
    procs.append(coord)
    coord.wait_for("training:", timeout=180)
    early = wait_for_step(port, 50, coord)
    rss_early = rss_kib(coord.pid)
    late = wait_for_step(port, STEPS - 20, coord)
    rss_late = rss_kib(coord.pid)
    assert coord.wait() == 0, coord.log()[-3000:]
    print(f"coordinator RSS at step {int(early['lenet_steps_total'])}: {rss_early / 1024:.1f} MiB, "
          f"at step {int(late['lenet_steps_total'])}: {rss_late / 1024:.1f} MiB")
    assert late["lenet_workers_alive"] == WORKERS
    assert late["lenet_workers_lost_total"] == 0  # no false death declaration
    assert late["lenet_shards_redispatched_total"] == 0
    assert rss_late - rss_early < 16 * 1024  # bounded: no per-step growth
    assert "lost" not in coord.log()
