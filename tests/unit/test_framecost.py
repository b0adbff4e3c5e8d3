"""The decoding-cost budget (coordinator/framecost.py): honest messages pass, element floods are told apart
before any is decoded."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

from coordinator import protocol as P
from coordinator.framecost import ELEMENT_BUDGET, within_budget
from coordinator.refusals import Reason
from lenet.model import LeNet5


def nested_empty_arrays(outer: int) -> bytes:
    return b"\xdc" + (1000).to_bytes(2, "big") + (b"\xdc" + (1000).to_bytes(2, "big") + b"\x90" * 1000) * outer


def test_honest_messages_are_far_within_the_budget():
    params = P.encode(P.Params(step=3, params=LeNet5().params, model=LeNet5.name))
    task = P.encode(P.Task(step=1, first=0, num_shards=P.MAX_SHARDS, sizes=[1] * P.MAX_SHARDS,
                           pixels=np.zeros((P.MAX_SHARDS, 28, 28), np.uint8), labels=np.zeros(P.MAX_SHARDS, np.uint8)))
    for frame in (params, task, P.encode(P.Heartbeat())):
        assert within_budget(frame)
        assert within_budget(frame, budget=2000)


@pytest.mark.parametrize("value", [0, -1, 2**40, 1.5, "x" * 300, b"y" * 70000, None, True, {"a": [1, 2]},
                                   list(range(20))])
def test_every_kind_of_element_is_skipped_by_its_length(value):
    frame = msgpack.packb({"k": value, "then": [1] * 10}, use_bin_type=True)
    assert within_budget(frame, budget=100)
    assert not within_budget(frame, budget=5)


def test_a_flood_of_nested_empty_arrays_is_refused_before_decoding():
    frame = nested_empty_arrays(500)  # ~500 KB, 500,000 elements
    assert not within_budget(frame)
    with pytest.raises(P.ProtocolError) as err:
        P.decode(frame)
    assert err.value.reason is Reason.MALFORMED
    assert str(ELEMENT_BUDGET) in err.value.detail


def test_truncated_frames_are_left_to_the_decoder():
    assert within_budget(b"\xdd\x00")
    with pytest.raises(P.ProtocolError):
        P.decode(b"\xdd\x00")
