"""Exit statuses of every command, and the errors a user can cause, in one place.

Commands raise a `UserError` subclass for anything the user can fix (bad flag, bad
data, unwritable path); `run_main` prints its message on one line and exits with
its status.  Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import enum
import signal
import sys
from collections.abc import Callable, Sequence


class ExitStatus(enum.IntEnum):
    OK = 0
    ERROR = 1  # unexpected failure (a bug): traceback printed
    USAGE = 2  # bad flag, environment variable or configuration
    DATA = 3  # MNIST files missing, corrupt or undownloadable
    STORAGE = 4  # checkpoint or output cannot be read or written
    NETWORK = 5  # address unusable, port in use, peer unreachable
    REFUSED = 6  # every result refused again and again, nothing accepted: the run cannot progress
    INTERRUPTED = 130  # stopped by SIGINT or SIGTERM after saving state (128 + SIGINT)


class UserError(Exception):
    """An error the user can fix; its message names the problem."""

    status = ExitStatus.ERROR


class UsageError(UserError):
    status = ExitStatus.USAGE


class DataError(UserError):
    status = ExitStatus.DATA


class StorageError(UserError):
    status = ExitStatus.STORAGE


class NetworkError(UserError):
    status = ExitStatus.NETWORK


class RefusedError(UserError):
    status = ExitStatus.REFUSED


def stop_signals_raise_interrupt() -> None:
    """SIGTERM, like SIGINT, raises `KeyboardInterrupt`: `run_main` then reports "interrupted" and exits 130.

    For a command with no state of its own to save (the in-process trainer): without it a
    supervisor's SIGTERM kills the process with -15 and no word.
    """
    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, interrupt)


def ignore_stop_signals() -> None:
    """From now on SIGTERM and SIGINT do nothing: the command has done its work and reported it.

    A supervisor's SIGTERM that arrives while the process tears down (Python's finalisation
    puts the default handlers back, and the default kills with -15) must not turn that into
    a failure.
    """
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)


def finishing(status: int) -> int:
    """`status`, the process now deaf to SIGTERM and SIGINT (`ignore_stop_signals`): for `sys.exit`."""
    ignore_stop_signals()
    return status


def run_main(main: Callable[[Sequence[str] | None], int], prog: str) -> int:
    """Run `main(argv)`, turning user errors into one line on stderr and a status."""
    try:
        return main(None)
    except UserError as err:
        print(f"{prog}: error: {err}", file=sys.stderr)
        return int(err.status)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return int(ExitStatus.INTERRUPTED)
