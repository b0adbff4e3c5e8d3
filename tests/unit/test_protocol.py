"""Every message round-trips; anything else is refused with a bounded reason."""

import msgpack
import numpy as np
import pytest

from coordinator import protocol as P
from coordinator.refusals import Reason
from lenet.model import FACTOR_WIDTHS, TREE_PARAMS, init_params


def grads():
    return init_params(0)


def tree_grads():
    return {k: v[None] for k, v in init_params(0).items() if k in TREE_PARAMS}  # one node


def factors(n: int):
    return {k: np.full((n, width), 0.5, np.float32) for k, width in FACTOR_WIDTHS.items()}


MESSAGES = [
    P.Register(name="host:1", pid=1, probe="ab" * 32, capacity=1, host="0123456789abcdef", cores=2),
    P.Capacity(capacity=4),
    P.Heartbeat(),
    P.Params(step=3, params=grads()),
    P.Task(step=3, first=2, num_shards=8, sizes=[3, 1], pixels=np.zeros((4, 28, 28), np.uint8),
           labels=np.array([0, 1, 2, 9], np.uint8)),
    P.Result(step=3, first=2, shards=2, count=4, losses=np.full(4, 0.375, np.float32), correct=2, compute_seconds=0.01,
             grads=tree_grads(),
             factors=factors(4)),
    P.Leave(),
    P.Shutdown(reason="done"),
    P.Error(code="unregistered", message="register first"),
]


@pytest.mark.parametrize("msg", MESSAGES, ids=lambda m: m.TYPE)
def test_round_trip(msg):
    got = P.decode(P.encode(msg))
    assert type(got) is type(msg)
    for name, value in vars(msg).items():
        if isinstance(value, dict):
            assert all(np.array_equal(value[k], getattr(got, name)[k]) for k in value)
        elif isinstance(value, np.ndarray):
            assert np.array_equal(value, getattr(got, name)) and value.dtype == getattr(got, name).dtype
        else:
            assert getattr(got, name) == value


def body(msg):
    return msgpack.unpackb(P.encode(msg), raw=False)


def reason_of(obj_or_bytes):
    frame = obj_or_bytes if isinstance(obj_or_bytes, bytes) else msgpack.packb(obj_or_bytes, use_bin_type=True)
    with pytest.raises(P.ProtocolError) as err:
        P.decode(frame)
    return err.value.reason


def test_rejections_name_their_reason():
    result = body(MESSAGES[5])
    assert reason_of(b"\xc1garbage") == "malformed"
    assert reason_of(P.encode(MESSAGES[5])[:-10]) == "malformed"
    assert reason_of([1, 2, 3]) == "malformed"
    assert reason_of({**result, "v": 99}) == "version"
    assert reason_of({**result, "type": "reboot"}) == "unknown_type"
    assert reason_of({**result, "extra": 1}) == "bad_field"
    assert reason_of({**result, "step": -1}) == "bad_field"
    assert reason_of({**result, "losses": P.encode_array(np.full(4, np.nan, np.float32))}) == "bad_field"
    assert reason_of({**result, "count": True}) == "bad_field"
    g = dict(result["grads"])
    g["conv1.bias"] = {**g["conv1.bias"], "dtype": "<f8"}
    assert reason_of({**result, "grads": g}) == "bad_array"
    g["conv1.bias"] = {**result["grads"]["conv1.bias"], "shape": [7]}
    assert reason_of({**result, "grads": g}) == "bad_array"
    g["conv1.bias"] = {**result["grads"]["conv1.bias"], "data": b"\0" * 7}
    assert reason_of({**result, "grads": g}) == "bad_array"
    assert reason_of({**result, "grads": {**result["grads"], "fc1.bias": result["grads"]["conv1.bias"]}}) == "bad_field"
    f = dict(result["factors"])
    f["fc2.input"] = {**f["fc2.input"], "shape": [4, 121]}
    assert reason_of({**result, "factors": f}) == "bad_array"
    assert reason_of(b"\0" * (P.MAX_MESSAGE_BYTES + 1)) == "too_large"


def test_task_with_mismatched_labels_or_bad_digits_is_refused():
    task = body(MESSAGES[4])
    task["labels"] = P.encode_array(np.array([1, 2], np.uint8))
    assert reason_of(task) == "bad_array"
    task["labels"] = P.encode_array(np.array([1, 2, 3, 10], np.uint8))
    assert reason_of(task) == "bad_array"
    task = body(MESSAGES[4])
    task["sizes"] = [3, 2]
    assert reason_of(task) == "bad_field"
    task["sizes"] = [4, 0]
    assert reason_of(task) == "bad_field"


def test_deep_nesting_and_huge_length_prefix():
    deep = b"\x91" * 100_000 + b"\x00"  # 100k nested one-element arrays
    assert reason_of(deep) == "malformed"
    huge_bin = b"\xc6\xff\xff\xff\xf0" + b"\0" * 10  # bin32 claiming ~4 GB
    assert reason_of(huge_bin) == "malformed"


def test_arrays_are_little_endian_raw_bytes():
    wire = P.encode_array(np.arange(3, dtype=">f4"))
    assert wire["dtype"] == "<f4" and wire["data"] == np.arange(3, dtype="<f4").tobytes()


def test_all_finite():
    g = grads()
    assert P.all_finite(g)
    g["fc3.bias"] = g["fc3.bias"].copy()
    g["fc3.bias"][0] = np.inf
    assert not P.all_finite(g)


def test_a_result_may_not_claim_the_impossible():
    """Valid msgpack, valid types, values that cannot be true: refused before the coordinator uses them."""
    result = body(MESSAGES[5])  # count 4
    assert reason_of({**result, "compute_seconds": -1.0}) == "bad_field"  # once crashed the coordinator
    assert reason_of({**result, "losses": P.encode_array(np.full(4, -0.5, np.float32))}) == "bad_field"
    assert reason_of({**result, "losses": P.encode_array(np.full(4, np.inf, np.float32))}) == "bad_field"
    assert reason_of({**result, "losses": P.encode_array(np.zeros(5, np.float32))}) == "bad_array"  # 5 for a count of 4
    assert reason_of({**result, "correct": 5}) == "bad_field"  # more correct than samples
    assert reason_of({**result, "correct": 10**9}) == "bad_field"
    assert reason_of({**result, "count": 5, "correct": 2}) == "bad_array"  # factors of 4 samples, not 5
    short = P.encode_array(np.zeros((3, FACTOR_WIDTHS["fc1.delta"]), np.float32))
    assert reason_of({**result, "factors": {**result["factors"], "fc1.delta": short}}) == "bad_array"


def test_what_a_worker_sends_is_small_enough_to_decode_cheaply():
    assert len(P.encode(MESSAGES[5])) <= P.max_result_bytes(4, 8) < 120_000
    whole_batch = P.Result(step=1, first=0, shards=64, count=128, losses=np.ones(128, np.float32), correct=1,
                           compute_seconds=0.1,
                           grads=tree_grads(), factors=factors(128))
    assert len(P.encode(whole_batch)) <= P.max_result_bytes(128, 64) < 1_000_000
    register = P.Register(name="x" * P.MAX_TEXT, pid=2**52, probe="f" * 64, capacity=P.MAX_CAPACITY,
                          host="f" * P.HOST_ID_CHARS, cores=P.MAX_CAPACITY)
    assert len(P.encode(register)) <= P.MAX_REGISTER_BYTES


@pytest.mark.parametrize("field, value", [("host", "0123"), ("host", "0123456789ABCDEF"), ("host", 7),
                                          ("host", "0123456789abcdeg"), ("cores", 0), ("cores", -1),
                                          ("cores", P.MAX_CAPACITY + 1), ("cores", True), ("cores", "2")])
def test_a_registration_with_a_malformed_host_or_core_count_is_refused(field, value):
    body = msgpack.unpackb(P.encode(MESSAGES[0]))
    body[field] = value
    with pytest.raises(P.ProtocolError) as err:
        P.decode(msgpack.packb(body, use_bin_type=True))
    assert err.value.reason is Reason.BAD_FIELD
