"""`python -m coordinator`: train LeNet-5 on MNIST with local and/or remote workers.

    python -m coordinator --epochs 5                       # one local worker per core
    python -m coordinator --bind tcp://0.0.0.0:5555 --workers 0 --min-workers 8

Exit status (lenet/status.py): 0 trained and saved; 2 bad flag or environment
value (or a limit the settings exceed); 3 MNIST unusable; 4 checkpoint/output
unusable; 5 address or port unusable; 6 every result refused, the run cannot
progress; 130 stopped by SIGINT/SIGTERM after writing a checkpoint (resume with
--resume).
"""

from __future__ import annotations

from lenet.runtime import pin_blas_threads

# Before NumPy loads: the coordinator's own maths must not take its workers' cores.
pin_blas_threads()

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from pathlib import Path  # noqa: E402

from typing import TYPE_CHECKING  # noqa: E402

from coordinator.config import ServiceConfig  # noqa: E402
from lenet import npzfile  # noqa: E402
from lenet.cli import add_flag, counted, optional, parse_bool, serve_metrics  # noqa: E402
from lenet.config import add_training_flags, config_from_args, recipe_warning  # noqa: E402
from lenet.shards import DEFAULT_SHARDS  # noqa: E402
from lenet.status import ExitStatus, RefusedError, UsageError, finishing, run_main  # noqa: E402

if TYPE_CHECKING:
    from coordinator import checkpoint as ckpt
    from coordinator.runs import RunIdentity
    from coordinator.training import StepReport
    from lenet.config import TrainConfig
    from lenet.data import MNIST
    from lenet.params import Params

log = logging.getLogger("coordinator")

# Verification by recomputation, by default on 2 % of units: each lie is caught with
# probability 0.02 (a liar after 50 lies on average), and then all its accepted answers
# are undone (docs/security.md, "What is still possible"), for 2 % more computing.
# Honest workers on other CPUs are already stopped at the door by the conformance probe.
VERIFY_FRACTION = 0.02


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m coordinator",
        description="Data-parallel training of LeNet-5 on MNIST: shards each batch over worker processes.",
        epilog="Every flag can also be set by the environment variable shown. Exit status: 0 done, 2 usage, "
               "3 data, 4 storage, 5 network, 6 every result refused, 130 interrupted (checkpoint written).",
    )
    add_training_flags(parser)
    add_flag(parser, "--data-dir", None, str, "directory with the MNIST files (else $MNIST_DIR, else the "
             "per-user cache, downloading if needed)")
    add_flag(parser, "--output", "lenet5.npz", str, "where to save the final model")
    add_flag(parser, "--workers", os.cpu_count() or 1, int, "local worker processes to start")
    add_flag(parser, "--min-workers", None, optional(int),
             "workers that must register before training starts (default: --workers, at least 1)")
    add_flag(parser, "--bind", None, str, "ZeroMQ endpoint for external workers, e.g. tcp://0.0.0.0:5555 "
             "(default: a private loopback port for local workers only)")
    add_flag(parser, "--shards", None, optional(int), "shards per global batch, and so the most workers a step can "
             f"use; results do not depend on the worker count (default: {DEFAULT_SHARDS}, or on --resume the "
             "checkpoint's)")
    add_flag(parser, "--metrics-port", 9110, int, "port of the Prometheus /metrics endpoint and the dashboard "
             "at / (0: off)")
    add_flag(parser, "--metrics-addr", "127.0.0.1", str, "address of the /metrics endpoint (0.0.0.0: all)")
    add_flag(parser, "--checkpoint-dir", Path("checkpoints"), optional(Path),
             "directory for checkpoints ('off' to disable)")
    add_flag(parser, "--checkpoint-every", 500, int, "also checkpoint every N steps (0: only at epoch ends)")
    add_flag(parser, "--resume", False, parse_bool,
             "continue this run from its newest intact checkpoint in --checkpoint-dir: the run of the same "
             "settings and data (with more --epochs than it has done: extended from where it stands, the "
             "learning-rate schedule then spanning the new epoch count); other runs' checkpoints are left alone")
    add_flag(parser, "--init-from", None, optional(Path),
             "start a new run from the parameters of this model file (the --output of an earlier run): "
             "fine-tuning; the optimizer and the schedule start afresh")
    add_flag(parser, "--heartbeat-timeout", 10.0, float, "seconds of silence before a worker is declared dead")
    add_flag(parser, "--task-timeout", 30.0, float, "cap on a unit's deadline; deadlines follow the measured compute "
             "time (10x the recent median, at least 3 s) and a missed one re-dispatches the unit")
    add_flag(parser, "--max-workers", 1024, int, "workers registered at once; more are refused")
    add_flag(parser, "--verify-fraction", VERIFY_FRACTION, float, "fraction of units (0-1) computed a second time "
             "by another worker and compared bit for bit; the minority of a mismatch is banned")
    add_flag(parser, "--curve-secret-key", None, optional(Path),
             "the coordinator's CURVE .key_secret file: turns on encryption and authentication")
    add_flag(parser, "--insecure", False, parse_bool, "listen beyond loopback without CURVE: anyone who reaches "
             "the port can join the run and read the model")
    add_flag(parser, "--checkpoint-key", None, optional(Path), "a key file (python -m coordinator.keys "
             "--checkpoint-key FILE) that signs checkpoints with an HMAC; with it, unsigned or wrongly signed "
             "checkpoints are refused")
    add_flag(parser, "--curve-authorized-dir", None, optional(Path),
             "directory of the public .key files of the workers admitted (with --curve-secret-key)")
    add_flag(parser, "--keep-best", False, parse_bool, "save the parameters of the epoch with the best test "
             "accuracy, not the last step's (the model file is written at each new best, for --resume)")
    add_flag(parser, "--progress", sys.stderr.isatty(), parse_bool,
             "live progress line on stderr (default: on when stderr is a terminal)")
    return parser


class Progress:
    """A single self-overwriting line on a terminal, refreshed at most twice a second."""

    def __init__(self) -> None:
        self.last = 0.0
        self.start = time.monotonic()
        self.samples = 0

    def __call__(self, report: StepReport, workers: int) -> None:
        self.samples += report.samples
        now = time.monotonic()
        if now - self.last < 0.5 and report.step < report.total_steps:
            return
        self.last = now
        epoch, index = divmod(report.step, report.steps_per_epoch)
        done = index / report.steps_per_epoch
        if index == 0 and report.step > 0:  # an epoch just ended: show it full, not the next one empty
            epoch, done = epoch - 1, 1.0
        bar = "#" * int(done * 20)
        rate = self.samples / max(1e-9, now - self.start)
        sys.stderr.write(f"\repoch {epoch + 1}/{report.epochs} [{bar:<20}] {done:4.0%} "
                         f"step {report.step}/{report.total_steps}  loss {report.loss:.4f}  "
                         f"{rate:,.0f} samples/s  {counted(workers, 'worker')} ")
        sys.stderr.flush()


class ClearProgressHandler(logging.StreamHandler):
    """Log lines on a terminal with a progress line: wipe that line first, so each record starts clean."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream.write("\r\033[K")
        super().emit(record)


def shard_count(asked: int | None, resume_from: ckpt.Checkpoint | None) -> int:
    """--shards if given; else the checkpoint's, so that a resumed run goes on as it started; else the default."""
    made_with = resume_from.meta["num_shards"] if resume_from is not None else None
    if asked is None:
        return made_with if made_with is not None else DEFAULT_SHARDS
    if made_with is not None and made_with != asked:
        log.info("resuming a run made with --shards %d with --shards %d, as asked: from here its numbers differ "
                 "from an uninterrupted %d-shard run", made_with, asked, made_with)
    return asked


def initial_params(path: Path, model: str) -> Params:
    """The parameters of the model file `path` (--init-from), which must hold `model`; one-line errors for
    anything else."""
    import numpy as np

    from lenet.train import file_model

    arrays, meta = npzfile.read_npz(path)
    if meta.get("kind") == "lenet5-checkpoint":
        raise UsageError(f"--init-from {path} is a training checkpoint, not a model: continue its run with "
                         "--resume and its --checkpoint-dir, or give the model file a run saved (--output)")
    try:
        params = file_model(meta, f"--init-from {path}", model).check_params(arrays, f"--init-from {path}")
    except ValueError as err:
        raise UsageError(str(err)) from None
    if not all(np.isfinite(a).all() for a in params.values()):
        raise UsageError(f"--init-from {path}: the parameters hold NaN or infinite values")
    return params


def pick_run(args: argparse.Namespace, config: TrainConfig, data: MNIST, key: bytes | None,
             init_from: str | None) -> tuple[ckpt.Checkpoint | None, RunIdentity]:
    """The checkpoint this run continues (None: a fresh run) and the run's identity; says in one line what it
    found in --checkpoint-dir (coordinator/runs.py decides)."""
    from coordinator import checkpoint as ckpt
    from coordinator import runs
    from lenet.data import steps_per_epoch

    n_train = min(config.train_subset or len(data.train_labels), len(data.train_labels))
    per_epoch = steps_per_epoch(n_train, config.batch_size)
    if args.resume:
        found = ckpt.candidates(args.checkpoint_dir, key, train_images=len(data.train_labels))
        choice = runs.choose([c for c, _ in found], config, args.shards, data.checksums, per_epoch, init_from)
        if choice.candidate is not None and choice.run is not None:
            c = next(c for cand, c in found if cand is choice.candidate)
            log.info("resuming from %s (step %d), run %s", args.checkpoint_dir / choice.candidate.name, c.step,
                     choice.candidate.run.run_id)
            total = config.epochs * per_epoch if config.max_steps is None else min(config.max_steps,
                                                                                   config.epochs * per_epoch)
            if c.step >= total:
                log.info("run %s is finished (step %d of %d): saving its model again; to train on, pass more "
                         "--epochs (LENET_EPOCHS in compose), or another --checkpoint-dir for a new run",
                         choice.run.run_id, c.step, total)
            if choice.extension is not None:
                log.info("extending run %s from step %d as run %s: %s", choice.candidate.run.run_id, c.step,
                         choice.run.run_id, choice.extension.describe(c.step))
            return c, choice.run
        log.info("%s in %s: starting from scratch", choice.why, args.checkpoint_dir)
    run = runs.identity(config, args.shards or DEFAULT_SHARDS, data.checksums, init_from)
    if args.checkpoint_dir is not None:
        seen = ckpt.describe_others(ckpt.list_checkpoints(args.checkpoint_dir), run.run_id)
        if seen:
            log.info("%s holds %s", args.checkpoint_dir, seen)
    return None, run


def service_config(args: argparse.Namespace) -> ServiceConfig:
    """The service settings the flags ask for (ValueError: a flag the user must fix)."""
    if args.workers < 0:
        raise ValueError(f"--workers must be >= 0, got {args.workers}")
    if args.shards is not None and args.shards < 1:
        raise ValueError(f"shards must be >= 1, got {args.shards}")
    if args.resume and args.checkpoint_dir is None:
        raise ValueError("--resume needs a --checkpoint-dir")
    if not 0 <= args.metrics_port <= 65535:
        raise ValueError(f"--metrics-port must be 0-65535, got {args.metrics_port}")
    if (args.curve_secret_key is None) != (args.curve_authorized_dir is None):
        raise ValueError("CURVE needs both --curve-secret-key and --curve-authorized-dir")
    if args.bind and not args.bind.startswith(("tcp://", "ipc://")):
        raise ValueError(f"--bind must be a ZeroMQ endpoint such as tcp://0.0.0.0:5555, got {args.bind!r}")
    min_workers = args.min_workers if args.min_workers is not None else max(1, args.workers)
    checkpoint_key = npzfile.load_key(args.checkpoint_key) if args.checkpoint_key is not None else None
    return ServiceConfig(bind=args.bind or "tcp://127.0.0.1:*", min_workers=min_workers,
                         heartbeat_timeout=args.heartbeat_timeout, task_timeout=args.task_timeout,
                         checkpoint_dir=args.checkpoint_dir, checkpoint_every=args.checkpoint_every,
                         max_workers=args.max_workers, verify_fraction=args.verify_fraction,
                         checkpoint_key=checkpoint_key)


def refuse_insecure_bind(args: argparse.Namespace) -> None:
    """Anything that listens beyond loopback authenticates its peers, unless the operator says --insecure."""
    import zmq

    from coordinator import keys
    from coordinator.endpoint import check_bindable

    if args.bind is None or args.curve_secret_key is not None or args.insecure or keys.is_loopback_endpoint(args.bind):
        return
    check_bindable(zmq.Context.instance(), args.bind)  # an unusable address is a network error first
    raise UsageError(f"refusing to listen on {args.bind} without CURVE: give --curve-secret-key and "
                     "--curve-authorized-dir (python -m coordinator.keys makes them), or --insecure")


def curve_setup(args: argparse.Namespace, service: ServiceConfig, keydir: Path) -> tuple[ServiceConfig, list[str]]:
    """CURVE on the service if asked for, and the flags that give local workers a key pair of their own."""
    from coordinator import keys

    if args.curve_secret_key is None:
        return service, []
    server_keys = keys.load_keypair(args.curve_secret_key)
    allowed = keys.load_allowed(args.curve_authorized_dir)
    local_args: list[str] = []
    fixed: frozenset[bytes] = frozenset()  # admitted whatever a reload of the directory says
    if args.workers:  # for this run only, in a directory removed at exit
        local_public, local_secret = keys.generate(keydir, "local-workers")
        fixed = frozenset({keys.load_public(local_public)})
        server_file = keys.write_public(keydir / "coordinator.key", server_keys.public)
        local_args = ["--curve-secret-key", str(local_secret), "--curve-server-key", str(server_file)]
    log.info("CURVE on: %d worker keys admitted", len(allowed | fixed))
    curve = keys.CurveServer(server_keys, allowed | fixed, authorized_dir=args.curve_authorized_dir, fixed=fixed)
    return dataclasses.replace(service, curve=curve), local_args


def main(argv: Sequence[str] | None = None) -> int:
    from prometheus_client import CollectorRegistry

    from coordinator import checkpoint as ckpt
    from coordinator.dashboard import RunHistory, start_dashboard
    from coordinator.metrics import Metrics
    from coordinator.service import run_service
    from coordinator.server import RunStuck
    from coordinator.step import limits_problem
    from coordinator.training import Training, TrainingDiverged
    from lenet.curves import write_curves
    from lenet.data import load_mnist
    from lenet.output import check_output, save_final
    from lenet.best import resumed_best
    from lenet.runlog import RunLog, runlog_path
    from lenet.runtime import raise_open_files_limit, tune_malloc
    from lenet.status import StorageError, UserError
    from lenet.tempfiles import sweep_stale_temporaries
    from lenet.train import load_model, save_model

    try:
        args = build_parser().parse_args(argv)
        train_config = config_from_args(args)
        service = service_config(args)
    except ValueError as err:
        raise UsageError(str(err)) from None
    refuse_insecure_bind(args)
    handler = ClearProgressHandler(sys.stderr) if args.progress else logging.StreamHandler(sys.stderr)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s coordinator %(message)s", handlers=[handler])
    tune_malloc()
    raise_open_files_limit()  # a socket per worker: 1,024 of them need more than the usual 1,024 descriptors
    with tempfile.TemporaryDirectory(prefix="lenet5-keys-") as keydir:
        service, local_args = curve_setup(args, service, Path(keydir))
        if args.checkpoint_dir is not None:
            ckpt.check_writable(args.checkpoint_dir)
            for stale in sweep_stale_temporaries(args.checkpoint_dir):
                log.info("removed a temporary file left by an earlier run: %s", stale)
        check_output(args.output)  # before the training, not after it
        data = load_mnist(args.data_dir)
        start_params = initial_params(args.init_from, train_config.model) if args.init_from is not None else None
        init_digest = npzfile.digest(start_params, "") if start_params is not None else None
        resume_from, run = pick_run(args, train_config, data, service.checkpoint_key, init_digest)
        service = dataclasses.replace(service, run=run)
        training = Training(train_config, shard_count(args.shards, resume_from), data)
        problem = limits_problem(train_config.batch_size, training.n_train, training.num_shards,
                                 type(training.model))
        if problem:
            raise UsageError(problem)
        if start_params is not None and resume_from is None:
            training.model.params = dict(start_params)
            log.info("starting from the parameters of %s (run %s)", args.init_from, run.run_id)
        if (warning := recipe_warning(train_config)) is not None:
            log.warning("%s", warning)
        if args.workers == 0 and args.bind is None:
            log.warning("--workers 0 without --bind: only a worker on this machine given the address below "
                        "can join; pass --bind tcp://0.0.0.0:5555 (with CURVE) for workers elsewhere, or --workers N")
        metrics, history = Metrics(CollectorRegistry()), RunHistory()
        http = None
        if args.metrics_port:
            http = serve_metrics(metrics.registry, args.metrics_addr, args.metrics_port,
                                 serve=lambda registry, addr, port: start_dashboard(registry, addr, port, history))
            log.info("metrics on http://%s:%d/metrics, dashboard on http://%s:%d/", args.metrics_addr,
                     args.metrics_port, args.metrics_addr, args.metrics_port)
        stop_signal: list[int] = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda signum, frame: stop_signal.append(signum))
        hup: list[int] = []  # SIGHUP: reload the CURVE allow-list, in the loop (not in the handler)
        signal.signal(signal.SIGHUP, lambda signum, frame: hup.append(signum))

        def reload_keys() -> bool:
            pending = bool(hup)
            hup.clear()
            return pending
        show = Progress() if args.progress else None
        runlog = RunLog(runlog_path(args.output), training.steps_per_epoch, train_config.to_dict(),
                        resume_step=resume_from.step if resume_from is not None else None,
                        resume_epochs=len(resume_from.meta["run"]["history"]) if resume_from is not None else 0)
        best = None
        if args.keep_best:
            try:
                saved = load_model(args.output, train_config.model) if resume_from is not None else None
            except UserError:
                saved = None
            best, lost = resumed_best(resume_from.meta["run"]["history"] if resume_from is not None else [],
                                      saved, train_config.to_dict())
            if lost:
                log.warning("--keep-best: %s; the best is chosen among the epochs from here", lost)

        def model_meta(kept: dict) -> dict:
            return {**kept, "data_checksums": data.checksums, "config": train_config.to_dict(),
                    "history": training.state.history}

        def on_epoch(e: dict, params: Params) -> None:  # when its test accuracy is known, a few steps later
            runlog.epoch(e)
            if best is not None and best.offer(e["epoch"], e["step"], e["test_accuracy"], params):
                try:  # now, so that an interrupted run's best survives to its --resume
                    save_model(args.output, params, model_meta({"step": e["step"], "epoch": e["epoch"],
                                                                "test_accuracy": e["test_accuracy"],
                                                                "best_epoch": e["epoch"]}), type(training.model))
                except StorageError as err:  # training goes on; the end of the run tries again
                    log.error("--keep-best: epoch %d's parameters kept in memory only: %s", e["epoch"], err)
        training.on_epoch = on_epoch

        def progress(report: StepReport, workers: int) -> None:
            history.record_step(report.step, report.loss, report.lr, report.samples)
            history.record_epochs(training.state.history)
            runlog.step(report.step, report.loss, report.lr)
            if show is not None:
                show(report, workers)

        start = time.monotonic()
        try:
            outcome = run_service(training, service, metrics, local_workers=args.workers,
                                  local_worker_args=[*local_args, "--model", train_config.model],
                                  resume_from=resume_from, stop=lambda: bool(stop_signal), reload_keys=reload_keys,
                                  progress=progress)
        except TrainingDiverged as err:
            runlog.close()
            raise UsageError(f"training diverged ({err}); lower --lr") from None
        except RunStuck as err:
            raise RefusedError(str(err)) from None
        finally:
            if http is not None:
                http.shutdown()
    if args.progress:
        sys.stderr.write("\n")
    st = outcome.state
    if not outcome.finished:
        runlog.close()
        log.info("stopped by signal %d at step %d; %s", stop_signal[0] if stop_signal else 0, st.step,
                 f"checkpoint {outcome.checkpoint}: the same command with --resume continues from there"
                 if outcome.checkpoint else "no checkpoint directory, so nothing to resume from")
        return int(ExitStatus.INTERRUPTED)
    test_acc = training.final_test_accuracy()
    params, kept = outcome.params, {"step": st.step, "epoch": st.step / training.steps_per_epoch,
                                    "test_accuracy": test_acc}
    if best is not None and st.step % training.steps_per_epoch:  # ended mid-epoch (--max-steps): a candidate too
        best.offer(st.step / training.steps_per_epoch, st.step, test_acc, outcome.params)
    if best is not None and best.params is not None:
        params, kept = best.params, {"step": best.step, "epoch": best.epoch, "test_accuracy": best.test_accuracy,
                                     "best_epoch": best.epoch}
        runlog.best(best.epoch, best.step, best.test_accuracy)
        log.info("%s (the last step's: %.2f%%)", best.summary(len(st.history)), 100 * test_acc)
    save_final(args.output, lambda path: save_model(path, params, model_meta(kept), type(training.model)),
               keep_in=[args.checkpoint_dir])
    runlog.end(st.step, kept["test_accuracy"], time.monotonic() - start)
    runlog.close()
    curves = write_curves(args.output, st.history, runlog.step_records(), f"{training.model.TITLE} on MNIST")
    log.info("done: test accuracy %.2f%% after %d steps (%.2f epochs) in %.1f s; model saved to %s, curves to %s, "
             "run log to %s", 100 * kept["test_accuracy"], st.step, st.step / training.steps_per_epoch,
             time.monotonic() - start, args.output, curves, runlog.path)
    return int(ExitStatus.OK)


if __name__ == "__main__":
    sys.exit(finishing(run_main(main, "coordinator")))
