"""Membership rules: who is alive, who may get work.  Time is passed in."""

import pytest

from coordinator.membership import Membership


def make() -> Membership[str]:
    m = Membership[str](heartbeat_timeout=10.0)
    assert m.join("a", "alpha", pid=1, now=0.0) and m.join("b", "beta", pid=2, now=0.0)
    return m


def test_a_registration_again_is_not_a_new_member_but_counts_as_alive():
    m = make()
    assert not m.join("a", "alpha", pid=1, now=8.0)
    assert len(m) == 2 and m.silent(now=15.0) == [("b", 15.0)]


def test_silence_up_to_the_timeout_is_alive_past_it_is_dead():
    m = make()
    m.touch("a", now=5.0)
    assert m.silent(now=10.0) == []
    assert m.silent(now=15.5) == [("a", 10.5), ("b", 15.5)]


def test_a_suspect_gets_no_work_until_it_speaks():
    m = make()
    m.suspect("a", now=3.0)
    assert m.eligible() == ["b"] and m.get("a").suspect_since == 3.0
    m.touch("a", now=4.0)
    assert m.eligible() == ["a", "b"]


def test_strangers_are_not_members():
    m = make()
    assert m.touch("zz", now=1.0) is None and m.get("zz") is None
    m.suspect("zz", now=1.0)  # nothing to suspect
    assert m.eligible() == ["a", "b"]


def test_exited_local_processes_are_found_by_pid_and_removed():
    m = make()
    assert m.with_pids([2, 99]) == ["b"]
    assert m.remove("b").name == "beta" and len(m) == 1


def test_timeout_must_be_positive():
    with pytest.raises(ValueError, match="must be > 0"):
        Membership(heartbeat_timeout=0)
