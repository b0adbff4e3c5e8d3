"""What the coordinator and a relay share as servers of members: the door, the receive loop, giving work.

Both bind a ROUTER endpoint that peers connect to and register with; both judge
peers by the same rules, written once here:
  - the door (`Hub.screen`): a banned peer, a revoked or switched CURVE key, an
    unknown peer sending more than a registration, a frame that is not a
    message: each refused and counted before anything else is done with it;
    a registration is admitted only with a valid name, the judge's own
    conformance probe, a capacity the judge accepts, room in the run and (for
    the coordinator) within the registration rate;
  - heartbeats are answered; a member silent for the heartbeat timeout is lost;
  - work is given with the parameters first, once per step per member
    (`Hub.give`).
Everything else a member sends is the owner's to handle (`Hub.drain`), each
message in isolation: one that makes the handler fail is refused and counted.
Log lines about peers are rate-limited: a flood costs a line per 10 s.

This module is the surface a relay (worker/relay.py) builds on, with the wire
(coordinator.protocol, coordinator.keys): `Hub`, `Batch` (units of work handed
out by one scheduler and judged by one `Verification`), `cut` (a task into
pieces for the relay's workers) and the pace estimates.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from itertools import accumulate

import zmq

from coordinator import keys
from coordinator import protocol as P
from coordinator.endpoint import RouterEndpoint
from coordinator.membership import Member, Membership, door_refusal
from coordinator.metrics import Metrics
from coordinator.dispatch import PREFETCH, plan_gives, sharing_cores
from coordinator.ratelimit import RateLimitedLog, ReplyLimiter, TokenBucket
from coordinator.refusals import Reason
from coordinator.scheduler import DeadlinePolicy, RecentRate, StepScheduler, work_units
from coordinator.step import Batch, same_result
from coordinator.trust import Verification, Vouch
from lenet.architecture import Model
from lenet.cli import counted
from lenet.probe import PROBE_SIZES, probe_digest

__all__ = ["Hub", "Batch", "cut", "DeadlinePolicy", "RecentRate", "Member", "Membership", "Reason", "RouterEndpoint",
           "Vouch"]

RECEIVE_BUDGET = 256  # messages handled per loop turn, so a flood cannot starve the rest of the loop
LOSSES_LOGGED = 3  # members found silent at once and logged one by one; the rest in one line

# A member's message, for the owner: (identity, member, message, now).
Handler = Callable[[bytes, Member, P.Message, float], None]


def timed_probe(model: type[Model], deadlines: DeadlinePolicy) -> str:
    """`model`'s probe digest (what a member must match at the door), its computation timed as the first
    measurement of the time per sample: deadlines follow it from the first step rather than starting at the
    --task-timeout cap, so ghosts that never answer cost a short deadline even then."""
    started = time.perf_counter()
    digest = probe_digest(model)
    deadlines.record(time.perf_counter() - started, sum(PROBE_SIZES))
    return digest


def cut(task: P.Task, parts: int, params_frame: bytes, task_timeout: float) -> Batch:
    """A task as a batch of `parts` pieces of consecutive shards (at least one piece)."""
    ranges, _ = work_units(len(task.sizes), [1] * max(1, parts))
    starts = [0, *accumulate(task.sizes)]  # where each shard starts in the task's samples
    frames, units, samples = [], [], []
    for a, b in ranges:
        lo, hi = starts[a], starts[b]
        frames.append(P.encode(P.Task(step=task.step, first=task.first + a, num_shards=task.num_shards,
                                      sizes=task.sizes[a:b], pixels=task.pixels[lo:hi], labels=task.labels[lo:hi])))
        units.append((task.first + a, task.first + b))
        samples.append(hi - lo)
    return Batch(task.step, params_frame, frames, StepScheduler(task.step, units, samples, task_timeout),
                 Verification(set(), same_result))


class Hub:
    """Members of one ROUTER endpoint: who may join, what they said, what they are given."""

    def __init__(self, endpoint: RouterEndpoint, members: Membership[bytes], probe: str, judge: str,
                 log: logging.Logger, release: Callable[[bytes], int], model: type[Model], *,
                 max_capacity: int = P.MAX_CAPACITY,
                 registrations: TokenBucket | None = None, metrics: Metrics | None = None,
                 count_word: str = "live", on_reject: Callable[[Reason, bytes | None, str], None] | None = None):
        """`judge` names this side in refusals ("coordinator", "relay"); `release(identity)` takes a gone
        member's units back and returns the shards re-queued; `count_word` ends a join line's count.  `model`:
        the run's, which members must compute (and their messages are decoded against); `probe` is its digest.
        `on_reject(reason, identity, detail)` hears of every refusal."""
        self.endpoint, self.members, self.probe, self.judge, self.log = endpoint, members, probe, judge, log
        self.model = model
        self.release, self.max_capacity, self.registrations = release, max_capacity, registrations
        self.metrics, self.count_word, self.on_reject = metrics, count_word, on_reject
        self.warnings = RateLimitedLog(interval=10.0)
        self.replies = ReplyLimiter(interval=1.0)
        self.join_lines = TokenBucket(rate=1.0, burst=16)  # a line per join, unless they flood in
        self.joins_unlogged = 0
        self.hosts_said: set[str] = set()  # machines with more members than cores, said once each
        self.host_lines = TokenBucket(rate=0.1, burst=8)

    # ------------------------------------------------------------------ sending and saying

    def name(self, identity: bytes) -> str:
        member = self.members.get(identity)
        return member.label if member else identity.hex()[:8]

    def send(self, identity: bytes, frame: bytes) -> None:
        if self.endpoint.send(identity, frame):
            if self.metrics is not None:
                self.metrics.sent_bytes.inc(len(frame))
        else:
            self.warn_limited("send_full", f"send buffer to {self.name(identity)} full: message dropped")

    def broadcast(self, frame: bytes) -> None:
        for identity in list(self.members.members):
            self.send(identity, frame)

    def give(self, identity: bytes, step: int, params_frame: bytes, task_frame: bytes) -> None:
        """A unit of `step` to a member: the step's parameters first if it has not had them."""
        member = self.members.get(identity)
        assert member is not None
        if member.params_step != step:
            self.send(identity, params_frame)
            member.params_step = step
        self.send(identity, task_frame)

    def dispatch(self, batches: Sequence[Batch], now: float, deadlines: DeadlinePolicy,
                 turnaround: RecentRate | None = None, prefetch: int = PREFETCH,
                 answered: Mapping[bytes, int] | None = None) -> int:
        """Hand out the batches' units to the members that may get work (coordinator/dispatch.py); returns
        how many were backups.  `answered`: per member, units answered whose answers wait to be judged."""
        able = self._able(now)
        members = self._sharing(able)
        chosen = {i for i, _ in members}
        standby = [(i, c) for i, c in able if i not in chosen]
        gives = plan_gives([b.scheduler for b in batches], members, now, deadlines, turnaround, prefetch, standby,
                           answered)
        for give in gives:
            batch = batches[give.batch]
            self.give(give.member, batch.step, batch.params_frame, batch.tasks[give.unit])
        return sum(g.backup for g in gives)

    def workers_for_work(self, now: float) -> list[tuple[bytes, int]]:
        """(identity, capacity) of the members that may be given work now, in joining order: trusted, with
        capacity, and on each machine no more than its cores (the others stand by)."""
        return self._sharing(self._able(now))

    def _sharing(self, able: list[tuple[bytes, int]]) -> list[tuple[bytes, int]]:
        """Of `able`, those that compute: on each machine no more than its cores (`sharing_cores`)."""
        members = self.members.members
        kept = set(sharing_cores([(i, members[i].host, members[i].cores) for i, _ in able]))
        return [(i, c) for i, c in able if i in kept]

    def _able(self, now: float) -> list[tuple[bytes, int]]:
        """(identity, capacity) of the trusted members with capacity, in joining order."""
        members = self.members.members
        return [(i, members[i].capacity) for i in self.members.eligible(now) if members[i].capacity > 0]

    def computing(self) -> int:
        """How many members compute at once when none is suspect: a relay's capacity, and its pieces per task."""
        members = self.members.members.values()
        return len(sharing_cores([(i, m.host, m.cores) for i, m in enumerate(members) if m.capacity > 0]))

    def refuse_peer(self, identity: bytes, code: str, message: str, now: float) -> None:
        """Tell a peer why it is refused, at most once a second per peer."""
        if self.replies.allow(identity, now):
            self.send(identity, P.encode(P.Error(code=code, message=message[: P.MAX_TEXT])))

    def warn_limited(self, key: object, text: str) -> None:
        """One log line per key per 10 s, whatever the flood, saying how many were held back."""
        held = self.warnings.admit(key, time.monotonic())
        if held is not None:
            self.log.warning("%s%s", text, f" (+{held} more like it since the last report)" if held else "")

    def reject(self, reason: Reason, identity: bytes | None, detail: str) -> None:
        if self.metrics is not None:
            self.metrics.rejected.labels(reason.value).inc()
        if self.on_reject is not None:
            self.on_reject(reason, identity, detail)
        who = self.name(identity) if identity else "?"
        self.warn_limited(reason.value, f"rejected message from {who}: {reason.value}: {detail[:200]!s}")

    # ------------------------------------------------------------------ receiving

    def drain(self, handle: Handler, fatal: tuple[type[BaseException], ...] = ()) -> None:
        """Handle the messages already queued, at most RECEIVE_BUDGET of them, each in isolation.

        Exceptions of the `fatal` types end the loop; any other is a bug, which must not end
        the run: the message is refused and the traceback logged (rate-limited).
        """
        for frames in self.endpoint.receive(RECEIVE_BUDGET):
            if self.metrics is not None:
                self.metrics.received_bytes.inc(sum(len(f.buffer) for f in frames))
            identity = frames[0].bytes if frames else None
            if len(frames) != 2 or identity is None:
                self.reject(Reason.MALFORMED, identity, f"{len(frames)} frames, expected 2")
                continue
            key = keys.sender_key(frames[1]) if self.endpoint.auth is not None else None
            now = time.monotonic()
            try:
                spoken = self.screen(identity, frames[1].buffer, now, key)
                if spoken is not None:
                    handle(identity, spoken[0], spoken[1], now)
            except fatal:
                raise
            except Exception as err:
                self.reject(Reason.INTERNAL_ERROR, identity, f"{type(err).__name__}: {err}")
                self.warn_limited("internal_error_traceback", "handling it failed:\n" + traceback.format_exc())

    def screen(self, identity: bytes, frame: bytes | memoryview, now: float,
               key: bytes | None = None) -> tuple[Member, P.Message] | None:
        """The door: a member's message for its owner, or None if refused or handled here.

        `key` is the CURVE public key that sent it (None without CURVE).
        """
        if identity in self.members.banned:
            self.reject(Reason.BANNED, identity, f"{len(frame)} bytes from a banned worker: dropped unread")
            self.refuse_peer(identity, "banned", f"banned for this run: it returned results the {self.judge}'s "
                             "own computation contradicts", now)
            return None
        if self.endpoint.auth is not None:
            if not self.endpoint.auth.allows(key):
                self.reject(Reason.REVOKED_KEY, identity, "sent with a key no longer admitted: dropped unread")
                return None
            member = self.members.get(identity)
            if member is not None and member.key != key:
                self.reject(Reason.KEY_MISMATCH, identity, "sent with another key than it registered with: "
                            "dropped unread")
                return None
        if identity not in self.members and len(frame) > P.MAX_REGISTER_BYTES:
            self.reject(Reason.UNREGISTERED, identity, f"{len(frame)} bytes from an unknown peer: dropped unread")
            self.refuse_peer(identity, "unregistered", "register first", now)
            return None
        try:
            msg = P.decode(frame, self.model)
        except P.ProtocolError as err:
            self.reject(err.reason, identity, err.detail)
            if err.reason is Reason.VERSION and identity not in self.members:  # another release: say so
                self.refuse_peer(identity, "version", f"this {self.judge} speaks protocol {P.PROTOCOL_VERSION} "
                                 f"({err.detail}): run the same release of lenet5 on both sides", now)
            return None
        if isinstance(msg, P.Register):
            self._register(identity, msg, now, key)
            return None
        member = self.members.touch(identity, now)
        if member is None:
            self.reject(Reason.UNREGISTERED, identity, f"{msg.TYPE} from an unknown worker")
            if not isinstance(msg, P.Leave):
                self.refuse_peer(identity, "unregistered", "register first", now)
            return None
        if self.metrics is not None:
            self.metrics.worker_seen(member.label)
        if isinstance(msg, P.Heartbeat):
            self.send(identity, P.encode(P.Heartbeat()))
            return None
        if isinstance(msg, P.Leave):
            self.remove(identity, "left")
            return None
        return member, msg

    def _register(self, identity: bytes, msg: P.Register, now: float, key: bytes | None) -> None:
        if identity not in self.members:
            refusal = self._admission(msg, now)
            if refusal is not None:
                reason, text = refusal
                self.reject(reason, identity, f"registration of {msg.name!r:.80}: {text}")
                if reason is not Reason.RATE_LIMITED:  # unanswered, it simply retries with back-off
                    self.refuse_peer(identity, reason.value, text, now)
                return
        elif msg.capacity > self.max_capacity:
            self.reject(Reason.BAD_FIELD, identity, f"re-registration with capacity {msg.capacity}")
            return
        if self.members.join(identity, msg.name, msg.pid, now, tag=identity.hex()[:6], key=key,
                             capacity=msg.capacity, host=msg.host, cores=msg.cores):
            if self.join_lines.take(now):
                more = f" (+{self.joins_unlogged} more joined since the last report)" if self.joins_unlogged else ""
                self.log.info("worker %s joined (%d %s)%s", self.name(identity), len(self.members), self.count_word,
                              more)
                self.joins_unlogged = 0
            else:
                self.joins_unlogged += 1
            self._say_standing_by(msg.host, now)
        if self.metrics is not None:
            self.metrics.worker_seen(self.name(identity))
            self.metrics.workers_alive.set(len(self.members))
        self.send(identity, P.encode(P.Heartbeat()))

    def _say_standing_by(self, host: str, now: float) -> None:
        """Once per machine, when it first has more members than cores: some stand by.  Rate-limited as joins
        are: peers that each claim a machine of their own cost a line per 10 s."""
        on_host = [m for m in self.members.members.values() if host and m.host == host]
        cores = max((m.cores for m in on_host), default=0)
        if len(on_host) > cores and host not in self.hosts_said and len(self.hosts_said) < self.members.max_members:
            self.hosts_said.add(host)
            if not self.host_lines.take(now):
                return
            self.log.info("host %s: %s on %s: %d at a time compute, the others stand by and take over from one "
                          "that fails (a worker's --cores)", host[:8], counted(len(on_host), "worker"),
                          counted(cores, "core"), cores)

    def _admission(self, msg: P.Register, now: float) -> tuple[Reason, str] | None:
        """Why a new peer may not join, or None."""
        refusal = door_refusal(msg.name, msg.probe, self.probe, self.judge, msg.model, self.model.name)
        if refusal is not None:
            if refusal[0] is Reason.NONCONFORMING and self.metrics is not None:
                self.metrics.probe_failures.inc()
            return refusal
        if msg.capacity > self.max_capacity:
            return Reason.BAD_FIELD, f"a {self.judge} serves workers, not other relays"
        if self.members.full:
            return Reason.FULL, f"the run has its maximum of {self.members.max_members} workers (--max-workers)"
        if self.registrations is not None and not self.registrations.take(now):
            return Reason.RATE_LIMITED, "registrations arrive faster than they are admitted"
        return None

    # ------------------------------------------------------------------ members leaving

    def remove(self, identity: bytes, why: str, quiet: bool = False) -> int:
        """A member is gone (left, lost, removed): take back its units; returns the shards re-queued."""
        return self.forget(identity, self.members.remove(identity), why, quiet)

    def forget(self, identity: bytes, member: Member, why: str, quiet: bool = False) -> int:
        """Its units back to the queue, its metric series gone, a line in the log (unless `quiet`)."""
        released = self.release(identity)
        if self.metrics is not None:
            self.metrics.redispatched.inc(released)
            self.metrics.forget_worker(member.label)
            self.metrics.workers_alive.set(len(self.members))
        if not quiet:
            self.log.info("worker %s %s (%d %s; %d shards re-dispatched)", member.label, why, len(self.members),
                          self.count_word, released)
        return released

    def drop_silent(self, now: float) -> None:
        """Members silent past the heartbeat timeout are presumed dead: a line each for a few, one for the rest."""
        silent = self.members.silent(now)
        for i, (identity, seconds) in enumerate(silent):
            if self.metrics is not None:
                self.metrics.workers_lost.inc()
            self.remove(identity, f"lost: silent for {seconds:.1f} s", quiet=i >= LOSSES_LOGGED)
        if len(silent) > LOSSES_LOGGED:
            self.log.info("%d more workers lost: silent for over %.0f s (%d %s)", len(silent) - LOSSES_LOGGED,
                          self.members.heartbeat_timeout, len(self.members), self.count_word)

    def poll(self, timeout: float) -> bool:
        return self.endpoint.poll(timeout)

    @property
    def sock(self) -> zmq.Socket:
        return self.endpoint.sock
