"""The wire protocol between coordinator and workers: every message, defined once.

Transport: the coordinator binds a ZeroMQ ROUTER socket, each worker connects a
DEALER whose routing id names it.  A message is one frame: a msgpack map
{"v": PROTOCOL_VERSION, "type": ..., <fields>}.  An array travels as a map
{"dtype": "<f4", "shape": [...], "data": <raw little-endian bytes>} and is rebuilt
with `np.frombuffer` only after its dtype and shape are checked against what that
field must hold.  Nothing is pickled.

Conversation (W = worker, C = coordinator):
    W -> C  Register(capacity)  C -> W  Heartbeat (ack: registered; repeated as keep-alive)
    W -> C  Heartbeat           C -> W  Heartbeat
    W -> C  Capacity            a relay's count of workers changed
    C -> W  Params(step, lag)   once per step, before the worker's first task of that step; tasks of
                                steps before step - lag are no longer wanted (a relay drops them)
    C -> W  Task(step, first, sizes)      a unit: a run of consecutive shards
    W -> C  Result(step, first, shards)   its node sums (lenet.reduction.cover) and its samples' factors

A relay (`python -m worker --relay`) speaks both sides: a worker to its coordinator
(with the capacity of the workers behind it), a coordinator to its workers.
    W -> C  Leave               on SIGTERM / shutdown
    C -> W  Shutdown            training is over (or the coordinator is stopping)
    C -> W  Error               "unregistered": register again; any other code: refused, say why
`decode` raises ProtocolError with a `Reason` (coordinator.refusals) for anything
that is not exactly one of these messages.  Parameters, gradients and factors are
decoded against the receiver's model (`decode(frame, model)`): their names and shapes
are the model's (lenet.architecture.Model); Register and Params name the model, and
Params of another model than the receiver's are refused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any, Callable, ClassVar, Union

import msgpack
import numpy as np

from coordinator.framecost import ELEMENT_BUDGET, within_budget
from coordinator.refusals import Reason
from lenet.architecture import Model
from lenet.models import DEFAULT_MODEL, get_model
from lenet.reduction import cover
from lenet.shards import UnitSums

# 2: Register carries the conformance probe's digest; 3: units, factors, losses, capacity; 4: the model's name;
# 5: Register says the worker's host and cores
PROTOCOL_VERSION = 6  # 6: Params says how many steps before its own are still open (`lag`)
MAX_LAG = 1  # steps open at once beyond the newest: --gradient-delay 1 hands out the next step early
MAX_MESSAGE_BYTES = 16 * 1024 * 1024  # coordinator -> worker (tasks); the workers' ZMQ_MAXMSGSIZE
MAX_SHARD_SAMPLES = 16384  # samples in one task
MAX_SHARDS = 1024
MAX_CAPACITY = 1024  # workers behind one relay
MAX_TEXT = 256


def max_result_bytes(samples: int, num_shards: int, model: type[Model] | None = None) -> int:
    """The largest Result of `model` (default: the default model) for a unit of `samples` samples in a batch
    of `num_shards` shards.

    Nothing else a worker may send is larger.  The coordinator's socket cuts off
    larger frames unread (its ZMQ_MAXMSGSIZE is this for the largest unit a step has), so decoding
    memory stays a small multiple of it.  A unit's cover has at most 2 log2(shards)
    nodes.
    """
    m = model or get_model(DEFAULT_MODEL)
    nodes = 2 * max(1, num_shards.bit_length())
    tree = sum(math.prod(m.PARAM_SHAPES[name]) for name in m.TREE_PARAMS)
    return 4 * (nodes * tree + samples * (1 + sum(m.FACTOR_WIDTHS.values()))) + 4096  # 1: the sample's loss


def max_task_bytes(samples: int) -> int:
    """The largest Task of a unit of `samples` samples: their pixels and labels, the shard sizes, the fields."""
    return samples * (28 * 28 + 1) + 5 * MAX_SHARDS + 4096


def max_unit_samples(num_shards: int, model: type[Model] | None = None) -> int:
    """The most samples a unit of `model` (default: the default model) may hold for its Task and its Result
    each to fit one message (MAX_MESSAGE_BYTES)."""
    def fits(n: int) -> bool:
        return max_result_bytes(n, num_shards, model) <= MAX_MESSAGE_BYTES and max_task_bytes(n) <= MAX_MESSAGE_BYTES

    lo, hi = 0, MAX_SHARD_SAMPLES  # fits(lo) holds; find the largest
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    return lo


MAX_REGISTER_BYTES = 2 * MAX_TEXT + 320  # what an unregistered peer may send before it is decoded


class ProtocolError(Exception):
    """A frame that is not a valid message; `reason` says which kind of invalid."""

    def __init__(self, reason: Reason, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


# --------------------------------------------------------------------------- field codecs


def _int(value: Any, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**53:
        raise ProtocolError(Reason.BAD_FIELD, f"{name} must be a non-negative integer, got {value!r:.40}")
    return value


def _float(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ProtocolError(Reason.BAD_FIELD, f"{name} must be a finite number >= 0, got {value!r:.40}")
    return float(value)


def _str(value: Any, name: str) -> str:
    if not isinstance(value, str) or len(value) > MAX_TEXT:
        raise ProtocolError(Reason.BAD_FIELD, f"{name} must be a string of at most {MAX_TEXT} characters")
    return value


HOST_ID_CHARS = 16  # lenet.runtime.host_id: hex digits of a hash


def _host(value: Any, name: str) -> str:
    if (not isinstance(value, str) or len(value) not in (0, HOST_ID_CHARS)
            or value.strip("0123456789abcdef")):
        raise ProtocolError(Reason.BAD_FIELD, f"{name} must be empty or {HOST_ID_CHARS} lowercase hex digits")
    return value


def _cores(value: Any, name: str) -> int:
    if _int(value, name) < 1 or value > MAX_CAPACITY:
        raise ProtocolError(Reason.BAD_FIELD, f"{name} must be 1 to {MAX_CAPACITY}")
    return value


def _sizes(value: Any, name: str) -> list[int]:
    if (not isinstance(value, list) or not 1 <= len(value) <= MAX_SHARDS
            or not all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_SHARD_SAMPLES for v in value)):
        raise ProtocolError(Reason.BAD_FIELD, f"{name} must be a list of 1 to {MAX_SHARDS} positive shard sizes")
    return value


def encode_array(a: np.ndarray) -> dict[str, Any]:
    a = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<"))
    return {"dtype": a.dtype.str, "shape": list(a.shape), "data": a.tobytes()}


_ARRAY_KEYS = frozenset({"dtype", "shape", "data"})


def _shape_fits(got: Any, shape: tuple[int | None, ...]) -> bool:
    if type(got) is not list or len(got) != len(shape):
        return False
    for d, want in zip(got, shape):  # a loop, not generators: this runs for every array received
        if type(d) is not int or d < 0 or (want is not None and d != want):
            return False
    return True


def decode_array(value: Any, name: str, dtype: str, shape: tuple[int | None, ...]) -> np.ndarray:
    """Rebuild an array, insisting on `dtype` and `shape` (None: any length, checked later).

    The array is a view of the received bytes, not a copy (read-only)."""
    if type(value) is not dict or value.keys() != _ARRAY_KEYS:
        raise ProtocolError(Reason.BAD_ARRAY, f"{name} must be a map of dtype, shape and data")
    if value["dtype"] != dtype:
        raise ProtocolError(Reason.BAD_ARRAY, f"{name} must have dtype {dtype}, got {value['dtype']!r:.20}")
    got = value["shape"]
    if not _shape_fits(got, shape):
        raise ProtocolError(Reason.BAD_ARRAY, f"{name} must have shape {shape}, got {got!r:.40}")
    data = value["data"]
    dt = np.dtype(dtype)
    if type(data) is not bytes or len(data) != math.prod(got) * dt.itemsize:
        raise ProtocolError(Reason.BAD_ARRAY, f"{name}: data length does not match shape {tuple(got)}")
    return np.frombuffer(data, dtype=dt).reshape(got)


def _params(value: Any, name: str, model: type[Model]) -> dict[str, np.ndarray]:
    if not isinstance(value, dict) or set(value) != set(model.PARAM_SHAPES):
        raise ProtocolError(Reason.BAD_FIELD, f"{name} must hold exactly the {model.TITLE} parameter names")
    return {k: decode_array(value[k], f"{name}.{k}", "<f4", shape) for k, shape in model.PARAM_SHAPES.items()}


def _tree_grads(value: Any, name: str, model: type[Model]) -> dict[str, np.ndarray]:
    tree = model.TREE_PARAMS
    if not isinstance(value, dict) or set(value) != set(tree):
        raise ProtocolError(Reason.BAD_FIELD, f"{name} must hold exactly the gradients {list(tree)}")
    arrays = {k: decode_array(value[k], f"{name}.{k}", "<f4", (None, *model.PARAM_SHAPES[k])) for k in tree}
    if len({len(a) for a in arrays.values()}) > 1:
        raise ProtocolError(Reason.BAD_ARRAY, f"{name} must hold as many node sums of every parameter")
    return arrays


def _factors(value: Any, name: str, model: type[Model]) -> dict[str, np.ndarray]:
    widths = model.FACTOR_WIDTHS
    if not isinstance(value, dict) or set(value) != set(widths):
        raise ProtocolError(Reason.BAD_FIELD, f"{name} must hold exactly the factors {list(widths)}")
    return {k: decode_array(value[k], f"{name}.{k}", "<f4", (None, width)) for k, width in widths.items()}


def _capacity(value: Any, name: str) -> int:
    if _int(value, name) > MAX_CAPACITY:
        raise ProtocolError(Reason.BAD_FIELD, f"{name} must be at most {MAX_CAPACITY}")
    return value


def _losses(value: Any, name: str) -> np.ndarray:
    a = decode_array(value, name, "<f4", (None,))
    if not (np.isfinite(a).all() and (a >= 0).all()):
        raise ProtocolError(Reason.BAD_FIELD, f"{name} must be finite numbers >= 0")
    return a


def _pixels(value: Any, name: str) -> np.ndarray:
    a = decode_array(value, name, "|u1", (None, 28, 28))
    if not 1 <= a.shape[0] <= MAX_SHARD_SAMPLES:
        raise ProtocolError(Reason.BAD_ARRAY, f"{name} must hold 1 to {MAX_SHARD_SAMPLES} images, got {a.shape[0]}")
    return a


def _labels(value: Any, name: str) -> np.ndarray:
    a = decode_array(value, name, "|u1", (None,))
    if a.size and a.max() > 9:
        raise ProtocolError(Reason.BAD_ARRAY, f"{name} must hold digits 0-9")
    return a


def _encode_value(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return encode_array(value)
    if isinstance(value, dict):
        return {k: encode_array(v) for k, v in value.items()}
    return value


def _f(decoder: Callable[[Any, str], Any]) -> Any:
    return field(metadata={"decode": decoder})


def _m(decoder: Callable[[Any, str, type[Model]], Any]) -> Any:
    """A field whose names and shapes are the receiving model's."""
    return field(metadata={"decode": decoder, "model": True})


def _model_field() -> Any:
    """The model a message is about: a name (the receiver decides whether it is its own)."""
    return field(default=DEFAULT_MODEL, metadata={"decode": _str})


# --------------------------------------------------------------------------- messages


@dataclass(frozen=True)
class Register:
    """A worker asks to join.

    `name` is for logs and metrics (host:pid by default; the coordinator admits only
    names of membership.NAME_RULE).  `capacity`: how many units' worth of work it takes at
    once, 1 for a worker, the number of its workers for a relay.  `probe` is the hex
    digest of the worker's answer to the fixed conformance probe (lenet.probe): the
    coordinator admits only workers whose arithmetic is bit for bit its own.  `model`:
    the model the worker computes (and its probe is of); another than the run's is refused.
    `host` names the machine (`lenet.runtime.host_id`; "" for unknown, as a relay says) and
    `cores` how many of its workers may compute at once there: more workers than cores on one
    machine only take turns on the cores, so the others stand by (coordinator/dispatch.py).
    """

    TYPE: ClassVar[str] = "register"
    name: str = _f(_str)
    pid: int = _f(_int)
    probe: str = _f(_str)
    capacity: int = _f(_capacity)
    model: str = _model_field()
    host: str = field(default="", metadata={"decode": _host})
    cores: int = field(default=1, metadata={"decode": _cores})


@dataclass(frozen=True)
class Heartbeat:
    """Keep-alive in both directions; the coordinator's also acknowledges Register."""

    TYPE: ClassVar[str] = "heartbeat"


@dataclass(frozen=True)
class Capacity:
    """A relay's workers changed: it now takes `capacity` units' worth of work (0: none for now)."""

    TYPE: ClassVar[str] = "capacity"
    capacity: int = _f(_capacity)


@dataclass(frozen=True)
class Params:
    """The parameters of `model` every task of `step` must be computed with.

    `lag`: how many steps before `step` are still open (their tasks still wanted): 0 when
    each step waits for the one before, 1 when the next step is handed out early
    (--gradient-delay 1).  A relay drops the tasks of steps before `step - lag`.
    """

    TYPE: ClassVar[str] = "params"
    step: int = _f(_int)
    params: dict[str, np.ndarray] = _m(_params)
    model: str = _model_field()
    lag: int = field(default=0, metadata={"decode": _int})

    def __post_init__(self) -> None:
        if self.lag > MAX_LAG or self.lag > self.step:
            raise ProtocolError(Reason.BAD_FIELD, f"lag {self.lag} must be at most {min(MAX_LAG, self.step)}")


@dataclass(frozen=True)
class Task:
    """Shards first .. first+len(sizes)-1 of a step's `num_shards`: a unit.

    `pixels` and `labels` hold the shards back to back, `sizes[i]` samples each.
    `num_shards` fixes the reduction tree, and so the unit's cover.
    """

    TYPE: ClassVar[str] = "task"
    step: int = _f(_int)
    first: int = _f(_int)
    num_shards: int = _f(_int)
    sizes: list[int] = _f(_sizes)
    pixels: np.ndarray = _f(_pixels)
    labels: np.ndarray = _f(_labels)

    def __post_init__(self) -> None:
        if self.labels.shape[0] != self.pixels.shape[0]:
            raise ProtocolError(Reason.BAD_ARRAY, f"{self.pixels.shape[0]} images but {self.labels.shape[0]} labels")
        if sum(self.sizes) != self.labels.shape[0]:
            raise ProtocolError(Reason.BAD_FIELD,
                                f"shard sizes add up to {sum(self.sizes)}, not {self.labels.shape[0]}")
        if self.first + len(self.sizes) > self.num_shards:
            raise ProtocolError(Reason.BAD_FIELD, f"shards {self.first}+{len(self.sizes)} of {self.num_shards}")


@dataclass(frozen=True)
class Result:
    """What a task's shards contribute (lenet.shards.UnitSums): each sample's loss and the
    correct count, the tree parameters' sums for each node of the unit's cover (stacked,
    in cover order: the coordinator checks their number), and one row of linear-layer
    factors per sample, in order."""

    TYPE: ClassVar[str] = "result"
    step: int = _f(_int)
    first: int = _f(_int)
    shards: int = _f(_int)
    count: int = _f(_int)
    losses: np.ndarray = _f(_losses)
    correct: int = _f(_int)
    compute_seconds: float = _f(_float)
    grads: dict[str, np.ndarray] = _m(_tree_grads)
    factors: dict[str, np.ndarray] = _m(_factors)

    def __post_init__(self) -> None:
        if self.correct > self.count:
            raise ProtocolError(Reason.BAD_FIELD, f"{self.correct} correct out of {self.count} samples")
        rows = {len(a) for a in (self.losses, *self.factors.values())}
        if rows != {self.count}:
            raise ProtocolError(Reason.BAD_ARRAY,
                                f"losses and factors of {sorted(rows)} samples for a count of {self.count}")


@dataclass(frozen=True)
class Leave:
    """The worker is going away (SIGTERM or shutdown): re-dispatch its shards now."""

    TYPE: ClassVar[str] = "leave"


@dataclass(frozen=True)
class Shutdown:
    """Training is over or the coordinator is stopping: the worker should exit."""

    TYPE: ClassVar[str] = "shutdown"
    reason: str = _f(_str)


@dataclass(frozen=True)
class Error:
    """The coordinator refused a message.

    Code "unregistered" means: register again.  Any other code refuses the
    registration itself (a bad name, a non-conforming probe, a ban, a full run):
    the worker says why and retries only after a long back-off.
    """

    TYPE: ClassVar[str] = "error"
    code: str = _f(_str)
    message: str = _f(_str)


Message = Union[Register, Heartbeat, Capacity, Params, Task, Result, Leave, Shutdown, Error]
_TYPES: dict[str, type] = {cls.TYPE: cls for cls in (Register, Heartbeat, Capacity, Params, Task, Result, Leave,
                                                     Shutdown, Error)}


# Each message type's fields, looked up once: encode and decode run for every message.
_FIELDS: dict[type, tuple] = {cls: fields(cls) for cls in _TYPES.values()}
_NAMES: dict[type, frozenset[str]] = {cls: frozenset(("v", "type", *(f.name for f in fs))) for cls, fs in _FIELDS.items()}


def encode(msg: Message) -> bytes:
    body: dict[str, Any] = {"v": PROTOCOL_VERSION, "type": msg.TYPE}
    for f in _FIELDS[type(msg)]:
        body[f.name] = _encode_value(getattr(msg, f.name))
    return msgpack.packb(body, use_bin_type=True)


def decode(frame: bytes | memoryview, model: type[Model] | None = None) -> Message:
    """Parse and validate one frame for a receiver computing `model` (default: the default model), or raise
    ProtocolError."""
    model = model or get_model(DEFAULT_MODEL)
    if len(frame) > MAX_MESSAGE_BYTES:
        raise ProtocolError(Reason.TOO_LARGE, f"{len(frame)} bytes, limit {MAX_MESSAGE_BYTES}")
    if not within_budget(frame):  # before any object is made: what decoding costs is bounded per frame
        raise ProtocolError(Reason.MALFORMED, f"more than {ELEMENT_BUDGET} msgpack elements")
    try:
        # Explicit limits: no container or string may claim more than a message can hold.
        body = msgpack.unpackb(frame, raw=False, strict_map_key=True, max_ext_len=0, max_bin_len=MAX_MESSAGE_BYTES,
                               max_str_len=MAX_TEXT, max_array_len=MAX_SHARDS, max_map_len=64)
    except Exception as err:  # msgpack raises many types for hostile input; all mean the same
        raise ProtocolError(Reason.MALFORMED, f"not msgpack: {type(err).__name__}") from None
    if not isinstance(body, dict):
        raise ProtocolError(Reason.MALFORMED, f"expected a map, got {type(body).__name__}")
    if body.get("v") != PROTOCOL_VERSION:
        raise ProtocolError(Reason.VERSION, f"protocol version {body.get('v')!r:.20}, expected {PROTOCOL_VERSION}")
    cls = _TYPES.get(body.get("type")) if isinstance(body.get("type"), str) else None
    if cls is None:
        raise ProtocolError(Reason.UNKNOWN_TYPE, f"message type {body.get('type')!r:.40}")
    if body.keys() != _NAMES[cls]:
        raise ProtocolError(Reason.BAD_FIELD, f"{cls.TYPE} must have exactly the fields "
                                              f"{[f.name for f in _FIELDS[cls]]}")
    if cls is Params and body["model"] != model.name:
        raise ProtocolError(Reason.WRONG_MODEL, f"parameters of model {body['model']!r:.40}, "
                            f"this side computes {model.name}")
    return cls(**{f.name: f.metadata["decode"](body[f.name], f.name, *([model] if "model" in f.metadata else []))
                  for f in _FIELDS[cls]})


def all_finite(arrays: dict[str, np.ndarray]) -> bool:
    return all(bool(np.isfinite(a).all()) for a in arrays.values())


def cover_size(result: Result, num_shards: int) -> int:
    """How many node sums `result` must hold: the nodes of its unit's cover in a tree of `num_shards`.
    (Not on the wire: it follows from the unit; whoever knows the tree checks it.)"""
    return len(cover(result.first, result.first + result.shards, num_shards))


def node_count(result: Result) -> int:
    """How many node sums `result` holds (every tree parameter holds as many: checked when decoded)."""
    return len(next(iter(result.grads.values())))


def cover_refusal(result: Result, num_shards: int) -> Reason | None:
    """BAD_ARRAY unless `result` holds one sum per node of its unit's cover, no more, no fewer."""
    return None if node_count(result) == cover_size(result, num_shards) else Reason.BAD_ARRAY


def result_of(step: int, sums: UnitSums, compute_seconds: float) -> Result:
    """The Result of a unit computed (`lenet.shards.unit_sums`) or gathered (`gather`): its one constructor."""
    first, end = sums.nodes[0][0], sums.nodes[-1][1]
    return Result(step=step, first=first, shards=end - first, count=len(sums.losses), losses=sums.losses,
                  correct=sums.correct, compute_seconds=compute_seconds, grads=sums.grads, factors=sums.factors)


def finite(result: Result) -> bool:
    """Whether every gradient and factor of `result` is finite (the losses are checked when decoded)."""
    return all_finite(result.grads) and all_finite(result.factors)
