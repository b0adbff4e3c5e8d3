"""`python -m worker --connect tcp://HOST:5555`: one training worker process.

`python -m worker --relay --connect tcp://HOST:5555 --listen tcp://127.0.0.1:5556`:
a relay for this host's workers instead (worker/relay.py); the workers then connect
to the relay's --listen endpoint.

BLAS is pinned to one thread before NumPy is imported: workers run one per core.
SIGTERM and SIGINT make the worker tell the coordinator it leaves, then exit 0.
It exits 0 too when the coordinator ends the run (its Shutdown: "training
finished", "coordinator stopped"), so a restart policy of on-failure leaves it
down, and with --give-up-after when no coordinator has answered for that long.
Otherwise it waits for a coordinator for ever, saying so once a minute.
"""

from __future__ import annotations

from lenet.runtime import pin_blas_threads

pin_blas_threads()  # before NumPy loads: workers run one per core

import argparse  # noqa: E402
import logging  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from collections.abc import Sequence  # noqa: E402
from typing import TYPE_CHECKING  # noqa: E402

from lenet.cli import add_flag, optional, parse_bool  # noqa: E402
from lenet.models import DEFAULT_MODEL  # noqa: E402
from lenet.status import ExitStatus, UsageError, finishing, run_main  # noqa: E402

if TYPE_CHECKING:
    from worker.client import WorkerConfig
    from worker.relay import Relay


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m worker", description="Run one LeNet-5 training worker.")
    add_flag(parser, "--connect", "tcp://127.0.0.1:5555", str, "coordinator endpoint")
    add_flag(parser, "--name", None, str, "name in the coordinator's logs and metrics (default: host:pid)")
    add_flag(parser, "--heartbeat-interval", 1.0, float, "seconds between heartbeats")
    add_flag(parser, "--coordinator-timeout", 10.0, float, "seconds of coordinator silence before reconnecting")
    add_flag(parser, "--give-up-after", None, optional(float), "seconds without any coordinator after which the "
             "worker exits 0, its run presumably over (default: wait for ever, saying why once a minute: a "
             "restarted coordinator takes its workers back)")
    add_flag(parser, "--metrics-port", 0, int, "serve this worker's Prometheus metrics on this port (0: off)")
    add_flag(parser, "--metrics-addr", "127.0.0.1", str, "address for the worker's metrics")
    add_flag(parser, "--curve-secret-key", None, optional(Path),
             "this worker's CURVE .key_secret file (turns CURVE on)")
    add_flag(parser, "--curve-server-key", None, optional(Path), "the coordinator's public CURVE .key file")
    add_flag(parser, "--relay", False, parse_bool, "run a relay for this host's workers instead of a worker: one "
             "member of the run that forwards the parameters once and gathers its workers' results")
    add_flag(parser, "--listen", "tcp://127.0.0.1:5556", str, "relay: where this host's workers connect")
    add_flag(parser, "--curve-authorized-dir", None, optional(Path),
             "relay: directory of the public .key files of the workers it admits (with --curve-secret-key)")
    add_flag(parser, "--insecure", False, parse_bool, "relay: listen beyond loopback without CURVE")
    add_flag(parser, "--cores", None, optional(int), "how many workers of this machine compute at once: the "
             "coordinator gives work to at most this many of the workers on one machine, the others stand by "
             "and take over from one that fails (default: the cores this process may run on)")
    add_flag(parser, "--model", DEFAULT_MODEL, str, "the model the run trains (the coordinator's --model): the "
             "coordinator refuses a worker of another")
    parser.add_argument("--self-test", action="store_true", help="print this machine's conformance probe digest "
                        "and exit: workers whose digest differs from the coordinator's are refused")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from coordinator.keys import CurveClient, load_keypair, load_public, require_curve
    from lenet.runtime import raise_open_files_limit, tune_malloc
    from worker.client import Worker, WorkerConfig
    from worker.metrics import serve_worker_metrics

    try:
        args = build_parser().parse_args(argv)
        kwargs: dict = {"name": args.name} if args.name else {}
        if args.cores is not None:
            kwargs["cores"] = args.cores
        if (args.curve_secret_key is None) != (args.curve_server_key is None):
            raise ValueError("CURVE needs both --curve-secret-key and --curve-server-key")
        if args.relay and args.give_up_after is not None:
            raise ValueError("--give-up-after is for workers: a relay waits for its coordinator")
        if args.relay and (args.curve_secret_key is None) != (args.curve_authorized_dir is None):
            raise ValueError("a relay with CURVE needs --curve-authorized-dir too: the keys of the workers it admits")
    except ValueError as err:
        raise UsageError(str(err)) from None
    if args.self_test:
        import numpy

        from lenet.models import get_model
        from lenet.probe import probe_digest

        try:
            model = get_model(args.model)
        except ValueError as err:
            raise UsageError(str(err)) from None
        print(f"probe digest {probe_digest(model)} of {model.name} (numpy {numpy.__version__}): it must be equal on every machine of "
              "a run, or those workers are refused")
        return int(ExitStatus.OK)
    if args.curve_secret_key is not None:
        require_curve()
        kwargs["curve"] = CurveClient(load_keypair(args.curve_secret_key), load_public(args.curve_server_key))
    if args.relay and "name" not in kwargs:
        from worker.relay import relay_name

        kwargs["name"] = relay_name()
    try:
        config = WorkerConfig(connect=args.connect, heartbeat_interval=args.heartbeat_interval,
                              coordinator_timeout=args.coordinator_timeout, give_up_after=args.give_up_after,
                              model=args.model, **kwargs)
    except ValueError as err:
        raise UsageError(str(err)) from None
    role = "relay" if args.relay else "worker"
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {role} {config.name} %(message)s")
    tune_malloc()
    if args.relay:
        raise_open_files_limit()  # a socket per worker it serves
        runner = relay(args, config)
    else:
        metrics = serve_worker_metrics(args.metrics_addr, args.metrics_port) if args.metrics_port else None
        runner = Worker(config, metrics=metrics)

    def stop(signum, frame):
        runner.stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    outcome = runner.run()
    logging.getLogger(role).info("exiting (%s)", outcome)
    return int(ExitStatus.OK)


def relay(args: argparse.Namespace, upstream: WorkerConfig) -> Relay:
    """The relay the flags ask for, listening (UsageError for an insecure listen, NetworkError if it cannot)."""
    from coordinator.keys import CurveServer, is_loopback_endpoint, load_allowed, load_keypair
    from worker.relay import Relay, RelayConfig

    if not args.listen.startswith(("tcp://", "ipc://")):
        raise UsageError(f"--listen must be a ZeroMQ endpoint such as tcp://0.0.0.0:5556, got {args.listen!r}")
    curve = None
    if args.curve_secret_key is not None:
        curve = CurveServer(load_keypair(args.curve_secret_key), load_allowed(args.curve_authorized_dir),
                            authorized_dir=args.curve_authorized_dir)
    elif not (args.insecure or is_loopback_endpoint(args.listen)):
        raise UsageError(f"refusing to listen on {args.listen} without CURVE: give --curve-secret-key, "
                         "--curve-server-key and --curve-authorized-dir, or --insecure")
    return Relay(RelayConfig(upstream=upstream, listen=args.listen, curve=curve))


if __name__ == "__main__":
    sys.exit(finishing(run_main(main, "worker")))
