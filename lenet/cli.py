"""Command-line helpers shared by every entry point: flags with environment defaults, the metrics server.

Every flag can also be set by the environment variable LENET_<FLAG> (for
containers); `--help` shows both.  Optional values are parsed one way everywhere:
`optional(parse)` reads "", "none", "off" or "auto" as None.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from typing import Any, TypeVar

from lenet.status import NetworkError

T = TypeVar("T")

NONE_WORDS = ("", "none", "off", "auto")


def counted(n: int, noun: str) -> str:
    """'1 worker', '2 workers': how every count is printed."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def env_name(flag: str) -> str:
    return "LENET_" + flag.lstrip("-").replace("-", "_").upper()


def parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true/false, got {text!r}")


def optional(parse: Callable[[str], T]) -> Callable[[str], T | None]:
    """A parser that also accepts one of NONE_WORDS, meaning "not set"."""

    def parse_optional(text: str) -> T | None:
        return None if text.strip().lower() in NONE_WORDS else parse(text)

    parse_optional.__name__ = getattr(parse, "__name__", "value")  # argparse names the type in its errors
    return parse_optional


def env_default(flag: str, default: Any, parse: Callable[[str], Any]) -> Any:
    """The flag's default, overridden by its environment variable if set."""
    var = env_name(flag)
    raw = os.environ.get(var)
    if raw is None or raw == "":
        return default
    try:
        return parse(raw)
    except ValueError as err:
        raise ValueError(f"environment variable {var}={raw!r} is not valid: {err}") from None


def add_flag(parser: argparse.ArgumentParser, flag: str, default: Any, parse: Callable[[str], Any], help: str) -> None:
    """A flag whose default comes from LENET_<FLAG> when that is set; help shows both.

    A `help` that already says "(default: ...)" (a default computed at run time, such as
    --lr's) keeps its own words and only gains the variable's name, unless the variable is set.
    """
    value = env_default(flag, default, parse)
    if "(default:" in help and value == default:
        full = f"{help} (env {env_name(flag)})"
    else:
        full = f"{help} (default: {value}; env {env_name(flag)})"
    if parse is parse_bool:
        parser.add_argument(flag, default=value, action=argparse.BooleanOptionalAction, help=full)
    else:
        parser.add_argument(flag, default=value, type=parse, help=full)


def serve_metrics(registry: Any, addr: str, port: int, serve: Callable[[Any, str, int], Any] | None = None) -> Any:
    """Serve `registry` at http://addr:port/metrics from a daemon thread; returns the server to shut down.

    `serve(registry, addr, port)` starts the server (default: prometheus_client's, which
    serves /metrics alone; the coordinator's also serves its dashboard).  An address or
    port that cannot be used is the user's to fix: a NetworkError.
    """
    if serve is None:
        from prometheus_client import start_http_server

        def serve(registry: Any, addr: str, port: int) -> Any:
            return start_http_server(port, addr=addr, registry=registry)[0]

    try:
        return serve(registry, addr, port)
    except OSError as err:
        raise NetworkError(f"cannot serve metrics on {addr}:{port}: {err.strerror or err}") from None
