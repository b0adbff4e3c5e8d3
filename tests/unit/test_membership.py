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


def test_a_suspect_gets_no_work_until_it_answers_a_task_a_heartbeat_is_not_enough():
    m = make()
    assert not m.suspect("a", now=3.0)
    assert m.eligible(now=4.0) == ["b"] and m.get("a").suspect_since == 3.0
    m.touch("a", now=4.0)
    assert m.eligible(now=4.0) == ["b"]  # alive, but not shown to compute
    m.vouch("a")
    assert m.eligible(now=4.0) == ["a", "b"]


def test_one_that_keeps_missing_without_answering_must_go_one_that_answers_never():
    m = make()
    assert [m.suspect("a", now=t) for t in (1.0, 2.0, 3.0)] == [False, False, True]
    for t in range(10):  # slow but answering: every miss is followed by a valid (late) result
        assert not m.suspect("b", now=float(t))
        m.vouch("b")
    for t in range(10):  # overtaken by backups is suspect, but no miss: it may still answer
        assert not m.suspect("b", now=20.0 + t, missed=False)
    assert m.get("b").misses == 0


def test_names_are_safe_text_and_labels_unique():
    from coordinator.membership import valid_name

    assert valid_name("host-1.example:4242") and valid_name("local-0")
    assert not any(valid_name(n) for n in ("", "a\nb", "a b", "x" * 65, "\x1b[31mred", "ü"))
    m = make()
    assert m.join("c", "alpha", pid=3, now=0.0, tag="c0ffee")
    assert [m.get(i).label for i in "abc"] == ["alpha", "beta", "alpha~c0ffee"]


def test_banned_members_are_out_and_remembered():
    m = make()
    assert m.ban("a").name == "alpha" and "a" not in m and "a" in m.banned
    assert m.ban("zz") is None and "zz" in m.banned


def test_the_table_has_a_cap():
    m = Membership[int](heartbeat_timeout=1.0, max_members=2)
    assert m.join(1, "a", 1, 0.0) and not m.full and m.join(2, "b", 2, 0.0) and m.full


def test_strangers_are_not_members():
    m = make()
    assert m.touch("zz", now=1.0) is None and m.get("zz") is None
    m.suspect("zz", now=1.0)  # nothing to suspect
    assert m.eligible(now=4.0) == ["a", "b"]


def test_exited_local_processes_are_found_by_pid_and_removed():
    m = make()
    assert m.with_pids([2, 99]) == ["b"]
    assert m.remove("b").name == "beta" and len(m) == 1


def test_timeout_must_be_positive():
    with pytest.raises(ValueError, match="must be > 0"):
        Membership(heartbeat_timeout=0)


def test_when_every_member_is_suspect_all_are_on_probation_rather_than_the_run_stalling():
    m = make()
    m.suspect("a", now=1.0)
    m.suspect("b", now=1.0)
    assert m.eligible(now=4.0) == ["a", "b"]


def test_members_are_found_by_the_key_they_registered_with():
    m = Membership[str](heartbeat_timeout=10.0)
    m.join("a", "alpha", 1, 0.0, key=b"K1")
    m.join("b", "beta", 2, 0.0, key=b"K2")
    m.join("c", "gamma", 3, 0.0)
    assert m.with_keys([b"K2", b"K3"]) == ["b"] and m.get("a").key == b"K1" and m.get("c").key is None



def test_the_door_refuses_unsafe_names_and_other_arithmetic_for_coordinator_and_relay_alike():
    from coordinator.membership import door_refusal

    assert door_refusal("w-1", "ab" * 32, "ab" * 32, "coordinator") is None
    reason, text = door_refusal("a\nb", "ab" * 32, "ab" * 32, "relay")
    assert reason == "bad_name" and "--name" in text
    reason, text = door_refusal("w-1", "cd" * 32, "ab" * 32, "relay")
    assert reason == "nonconforming" and "is not the relay's abababababab" in text and "OpenBLAS" in text
    assert len(text) <= 256  # fits the protocol's text fields


def test_a_suspect_is_on_probation_after_a_back_off_that_doubles_with_each_strike():
    m = Membership(heartbeat_timeout=60.0, probation=5.0, max_probation=30.0)
    for name in "ab":
        m.join(name, name, 1, now=0.0)
    m.suspect("a", now=10.0, missed=False)  # overtaken by a backup: a first strike
    assert m.eligible(now=14.9) == ["b"] and m.eligible(now=15.0) == ["a", "b"]
    m.suspect("a", now=20.0, missed=False)  # given a unit on probation, overtaken again
    assert m.eligible(now=29.9) == ["b"] and m.eligible(now=30.0) == ["a", "b"]
    for t in (40.0, 50.0, 60.0):
        m.suspect("a", now=t, missed=False)
    assert m.eligible(now=89.9) == ["b"] and m.eligible(now=90.0) == ["a", "b"]  # capped at max_probation
    m.vouch("a")  # a valid answer: no strikes left
    m.suspect("a", now=100.0, missed=False)
    assert m.eligible(now=105.0) == ["a", "b"]
