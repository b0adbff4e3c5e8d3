"""`python -m coordinator`: train LeNet-5 on MNIST with local and/or remote workers.

    python -m coordinator --epochs 5                       # one local worker per core
    python -m coordinator --bind tcp://0.0.0.0:5555 --workers 0 --min-workers 8

Exit status (lenet/status.py): 0 trained and saved; 2 bad flag or environment
value; 3 MNIST unusable; 4 checkpoint/output unusable; 5 address or port unusable;
130 stopped by SIGINT/SIGTERM after writing a checkpoint (resume with --resume).
"""

from __future__ import annotations

from lenet.runtime import pin_blas_threads

# Before NumPy loads: the coordinator's own maths must not take its workers' cores.
pin_blas_threads()

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import os  # noqa: E402
import logging  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from pathlib import Path  # noqa: E402

from lenet.config import add_flag, add_training_flags, config_from_args, parse_bool  # noqa: E402
from lenet.status import ExitStatus, NetworkError, UsageError, run_main  # noqa: E402

log = logging.getLogger("coordinator")


def _optional_path(text: str) -> Path | None:
    return None if text.strip().lower() in ("", "none", "off") else Path(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m coordinator",
        description="Data-parallel training of LeNet-5 on MNIST: shards each batch over worker processes.",
        epilog="Every flag can also be set by the environment variable shown. Exit status: 0 done, 2 usage, "
               "3 data, 4 storage, 5 network, 130 interrupted (checkpoint written).",
    )
    add_training_flags(parser)
    add_flag(parser, "--data-dir", None, str, "directory with the MNIST files (else $MNIST_DIR, else the "
             "per-user cache, downloading if needed)")
    add_flag(parser, "--output", "lenet5.npz", str, "where to save the final model")
    add_flag(parser, "--workers", os.cpu_count() or 1, int, "local worker processes to start")
    add_flag(parser, "--min-workers", None, lambda s: None if s in ("", "none") else int(s),
             "workers that must register before training starts (default: --workers, at least 1)")
    add_flag(parser, "--bind", None, str, "ZeroMQ endpoint for external workers, e.g. tcp://0.0.0.0:5555 "
             "(default: a private loopback port for local workers only)")
    add_flag(parser, "--shards", 8, int, "shards per global batch (fixed: results do not depend on worker count)")
    add_flag(parser, "--metrics-port", 9110, int, "port of the Prometheus /metrics endpoint and the dashboard "
             "at / (0: off)")
    add_flag(parser, "--metrics-addr", "127.0.0.1", str, "address of the /metrics endpoint (0.0.0.0: all)")
    add_flag(parser, "--checkpoint-dir", Path("checkpoints"), _optional_path,
             "directory for checkpoints ('off' to disable)")
    add_flag(parser, "--checkpoint-every", 500, int, "also checkpoint every N steps (0: only at epoch ends)")
    add_flag(parser, "--resume", False, parse_bool,
             "continue from the newest intact checkpoint in --checkpoint-dir")
    add_flag(parser, "--heartbeat-timeout", 10.0, float, "seconds of silence before a worker is declared dead")
    add_flag(parser, "--task-timeout", 30.0, float, "seconds before a shard is taken back and re-dispatched")
    add_flag(parser, "--curve-secret-key", None, _optional_path,
             "the coordinator's CURVE .key_secret file: turns on encryption and authentication")
    add_flag(parser, "--curve-authorized-dir", None, _optional_path,
             "directory of the public .key files of the workers admitted (with --curve-secret-key)")
    add_flag(parser, "--progress", sys.stderr.isatty(), parse_bool,
             "live progress line on stderr")
    return parser


class Progress:
    """A single self-overwriting line on a terminal, refreshed at most twice a second."""

    def __init__(self) -> None:
        self.last = 0.0
        self.start = time.monotonic()
        self.samples = 0

    def __call__(self, c) -> None:
        self.samples += c.last_step_samples
        now = time.monotonic()
        if now - self.last < 0.5 and c.state.step < c.total_steps:
            return
        self.last = now
        st = c.state
        epoch, index = divmod(st.step, c.steps_per_epoch)
        done = index / c.steps_per_epoch
        if index == 0 and st.step > 0:  # an epoch just ended: show it full, not the next one empty
            epoch, done = epoch - 1, 1.0
        bar = "#" * int(done * 20)
        rate = self.samples / max(1e-9, now - self.start)
        sys.stderr.write(f"\repoch {epoch + 1}/{c.train.epochs} [{bar:<20}] {done:4.0%} "
                         f"step {st.step}/{c.total_steps}  loss {c.last_loss:.4f}  "
                         f"{rate:,.0f} samples/s  {len(c.workers)} workers ")
        sys.stderr.flush()


class ClearProgressHandler(logging.StreamHandler):
    """Log lines on a terminal with a progress line: wipe that line first, so each record starts clean."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream.write("\r\033[K")
        super().emit(record)


def main(argv: Sequence[str] | None = None) -> int:
    import zmq
    from prometheus_client import CollectorRegistry

    from coordinator import checkpoint as ckpt
    from coordinator import keys
    from coordinator.dashboard import RunHistory, start_dashboard
    from coordinator.local_workers import LocalWorkers
    from coordinator.metrics import Metrics
    from coordinator.server import Coordinator, ServiceConfig, TrainingDiverged
    from lenet.curves import write_curves
    from lenet.data import load_mnist
    from lenet.runtime import tune_malloc
    from lenet.train import evaluate, save_model

    try:
        args = build_parser().parse_args(argv)
        train_config = config_from_args(args)
        if args.workers < 0:
            raise ValueError(f"--workers must be >= 0, got {args.workers}")
        min_workers = args.min_workers if args.min_workers is not None else max(1, args.workers)
        if args.resume and args.checkpoint_dir is None:
            raise ValueError("--resume needs a --checkpoint-dir")
        if not 0 <= args.metrics_port <= 65535:
            raise ValueError(f"--metrics-port must be 0-65535, got {args.metrics_port}")
        service = ServiceConfig(bind=args.bind or "tcp://127.0.0.1:*", num_shards=args.shards,
                                min_workers=min_workers, heartbeat_timeout=args.heartbeat_timeout,
                                task_timeout=args.task_timeout, checkpoint_dir=args.checkpoint_dir,
                                checkpoint_every=args.checkpoint_every)
        if (args.curve_secret_key is None) != (args.curve_authorized_dir is None):
            raise ValueError("CURVE needs both --curve-secret-key and --curve-authorized-dir")
        if args.bind and not args.bind.startswith(("tcp://", "ipc://")):
            raise ValueError(f"--bind must be a ZeroMQ endpoint such as tcp://0.0.0.0:5555, got {args.bind!r}")
    except ValueError as err:
        raise UsageError(str(err)) from None

    handler = ClearProgressHandler(sys.stderr) if args.progress else logging.StreamHandler(sys.stderr)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s coordinator %(message)s", handlers=[handler])
    tune_malloc()
    keydir = tempfile.TemporaryDirectory(prefix="lenet5-keys-")  # local workers' CURVE keys, if any
    local_args: list[str] = []
    if args.curve_secret_key is not None:
        server_keys = keys.load_keypair(args.curve_secret_key)
        allowed = keys.load_allowed(args.curve_authorized_dir)
        if args.workers:  # local workers get a key pair of their own, for this run only
            local_public, local_secret = keys.generate(Path(keydir.name), "local-workers")
            allowed |= {keys.load_public(local_public)}
            server_file = keys.write_public(Path(keydir.name) / "coordinator.key", server_keys.public)
            local_args = ["--curve-secret-key", str(local_secret), "--curve-server-key", str(server_file)]
        service = dataclasses.replace(service, curve=keys.CurveServer(server_keys, frozenset(allowed)))
        log.info("CURVE on: %d worker keys admitted", len(allowed))
    if args.checkpoint_dir is not None:
        ckpt.check_writable(args.checkpoint_dir)
    data = load_mnist(args.data_dir)
    resume_from = ckpt.load_latest(args.checkpoint_dir) if args.resume else None
    if args.resume and resume_from is None:
        log.info("no checkpoint in %s: starting from scratch", args.checkpoint_dir)

    registry = CollectorRegistry()
    metrics = Metrics(registry)
    history = RunHistory()
    http = None
    if args.metrics_port:
        try:
            http = start_dashboard(registry, args.metrics_addr, args.metrics_port, history)
        except OSError as err:
            raise NetworkError(f"cannot serve metrics on {args.metrics_addr}:{args.metrics_port}: "
                               f"{err.strerror or err}") from None
        log.info("metrics on http://%s:%d/metrics, dashboard on http://%s:%d/", args.metrics_addr,
                 args.metrics_port, args.metrics_addr, args.metrics_port)

    stop_signal: list[int] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: stop_signal.append(signum))

    context = zmq.Context()
    coordinator = Coordinator(train_config, service, data, metrics, context=context)
    local = None
    try:
        if resume_from is not None:
            coordinator.restore(resume_from)
        endpoint = coordinator.endpoint.replace("0.0.0.0", "127.0.0.1")
        log.info("listening on %s", coordinator.endpoint)
        if args.workers:
            local = LocalWorkers(args.workers, endpoint, local_args)
        start = time.monotonic()

        def tick() -> None:
            if local is not None:
                coordinator.forget_exited(local.supervise())

        show = Progress() if args.progress else None

        def progress(c: Coordinator) -> None:
            history.record_step(c.state.step, c.last_loss, c.schedule(c.state.step - 1), c.last_step_samples)
            history.record_epochs(c.state.history)
            if show is not None:
                show(c)

        try:
            outcome = coordinator.run(stop=lambda: bool(stop_signal), tick=tick, progress=progress)
        except TrainingDiverged as err:
            coordinator.save_checkpoint()
            raise UsageError(f"training diverged ({err}); lower --lr") from None
        if args.progress:
            sys.stderr.write("\n")
        if not outcome.finished:
            path = coordinator.save_checkpoint()
            log.info("stopped by signal %d at step %d; %s", stop_signal[0] if stop_signal else 0,
                     outcome.state.step, f"checkpoint {path}" if path else "no checkpoint directory")
            coordinator.broadcast_shutdown("coordinator stopped")
            return int(ExitStatus.INTERRUPTED)
        coordinator.broadcast_shutdown("training finished")
        st = outcome.state
        test_acc = (st.history[-1]["test_accuracy"] if st.history and st.step % coordinator.steps_per_epoch == 0
                    else evaluate(outcome.params, data.test_images, data.test_labels))
        if st.step % coordinator.steps_per_epoch:
            coordinator.save_checkpoint()  # a --max-steps run ends mid-epoch: keep its state too
        save_model(args.output, outcome.params, {
            "step": st.step, "epoch": st.step / coordinator.steps_per_epoch, "test_accuracy": test_acc,
            "data_checksums": data.checksums, "config": train_config.to_dict(), "history": st.history,
        })
        curves = write_curves(args.output, st.history)
        log.info("done: test accuracy %.2f%% after %d steps (%.2f epochs) in %.1f s; model saved to %s, curves to %s",
                 100 * test_acc, st.step, st.step / coordinator.steps_per_epoch, time.monotonic() - start,
                 args.output, curves)
        return int(ExitStatus.OK)
    finally:
        rejected = metrics.rejected_by_reason()
        if rejected:
            log.info("rejected %d messages during the run: %s", sum(rejected.values()),
                     ", ".join(f"{reason} {n}" for reason, n in sorted(rejected.items())))
        if local is not None:
            local.stop()
        coordinator.close()
        context.term()
        keydir.cleanup()
        if http is not None:
            http.shutdown()


if __name__ == "__main__":
    sys.exit(run_main(main, "coordinator"))
