"""What the commands print about themselves: one default per flag in --help, counts in good English."""

import signal

import pytest

from lenet.cli import counted
from lenet.status import ExitStatus, finishing


def parsers():
    from coordinator.__main__ import build_parser as coordinator_parser
    from lenet.train import build_parser as train_parser
    from worker.__main__ import build_parser as worker_parser

    return {"coordinator": coordinator_parser(), "lenet.train": train_parser(), "worker": worker_parser()}


@pytest.mark.parametrize("name", ["coordinator", "lenet.train", "worker"])
def test_help_gives_each_flag_one_default(name, monkeypatch):
    monkeypatch.delenv("LENET_LR", raising=False)
    parser = parsers()[name]
    formatter = parser._get_formatter()
    for action in parser._actions:
        if action.help:
            text = formatter._expand_help(action)
            assert text.count("default:") <= 1, (action.option_strings, text)


def test_lr_min_workers_and_progress_help_say_what_happens():
    helps = {a.option_strings[0]: a.help for a in parsers()["coordinator"]._actions if a.option_strings}
    assert "(default: 0.05 x batch-size / 128)" in helps["--lr"] and "None" not in helps["--lr"]
    assert "(default: --workers, at least 1)" in helps["--min-workers"] and "None" not in helps["--min-workers"]
    # It turns on at a terminal whatever the process that printed the help had as stderr.
    assert "on when stderr is a terminal" in helps["--progress"]
    assert "False" not in helps["--progress"] and "True" not in helps["--progress"]


def test_an_environment_value_is_the_default_shown(monkeypatch):
    monkeypatch.setenv("LENET_LR", "0.1")
    helps = {a.option_strings[0]: a.help for a in parsers()["coordinator"]._actions if a.option_strings}
    assert "(default: 0.1; env LENET_LR)" in helps["--lr"]


def test_counts():
    assert [counted(n, "worker") for n in (0, 1, 2)] == ["0 workers", "1 worker", "2 workers"]


def test_finishing_makes_the_process_deaf_to_stop_signals():
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        assert finishing(int(ExitStatus.OK)) == 0
        assert all(signal.getsignal(sig) is signal.SIG_IGN for sig in saved)
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)
