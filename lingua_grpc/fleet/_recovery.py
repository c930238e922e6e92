"""Nothing held by the dead: every instance looks for instances whose lease lapsed; exactly one survivor (a
Lua claim) takes over what each left.

What a dead instance leaves, and what becomes of it:
- hand-offs in its inbox: an attempt handed to it for a node it held goes back to its owner, which runs it
  again at once; a node's result for one of its jobs is recorded and handed to the instance that owns the
  session now, if its client resumed it (else a resume finds it in the store); a failure puts the job back
  to wait, CREATED, and frees the attempt's slot; a question from a new owner (a reroute) is answered
  "lost";
- its sessions' jobs not yet final: they wait for their clients to resume (on any instance). Running ones
  keep running (the instances holding their nodes record their results); queued ones stay queued for the
  new owner to place; an attempt still only ASSIGNED well past the accept timeout (handed to no node before
  the death) goes back to CREATED and its slot is freed. Sessions without a record in the store (not
  resumable) have their jobs ended SKIPPED (reason owner_lost), each running attempt cancelled on its node
  and its slot freed;
- node streams it held: the nodes register again elsewhere, with the attempts they run (their slot sets
  become exactly those); a node that does not comes off the registry when its lease lapses;
- its record: removed from the fleet's list.

Dead means unrenewed while Redis answered: a survivor claims an instance only once it has itself seen that
instance's record unrenewed for `lease_ms` of its own successful sweeps (counted from one sweep to the next,
and only across sweeps that read Redis), besides the lease key having lapsed. A Redis outage or restart is
no instance's death: a lease that lapsed while Redis was away (its TTL ran out, or passed while Redis was
down and its AOF kept it) is renewed by its instance's next heartbeat before any survivor has counted a
lease of contact. Before, every instance claimed every other after one restart longer than the lease, and
all of them stopped (issue 27).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from redis.asyncio import Redis
from redis.exceptions import RedisError

from lingua_grpc.clock import Clock
from lingua_grpc.fleet._inbox import Courier, entries_of
from lingua_grpc.fleet._instances import InstanceRegistry
from lingua_grpc.fleet._messages import Assign, Lost, Relayed, Reroute, decode
from lingua_grpc.fleet._relay import FleetTransport, Relay
from lingua_grpc.jobs import LIVE_STATES, JobOutput, JobState, JobStore, job_id, parse_job_id
from lingua_grpc.metrics import SchedulerMetrics
from lingua_grpc.store import Claim, InstanceKeys, ScriptBook, text
from lingua_grpc.tasks import cancel_and_wait, raise_if_cancelling

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Recovered:
    """What one survivor took over from one dead instance."""

    instance_id: str
    handoffs_returned: int = 0  # attempts handed to it, sent back to their owners
    results_recorded: int = 0  # node results for its jobs, found in its inbox and recorded
    slots_released: int = 0
    jobs_ended: int = 0  # jobs of sessions that cannot be resumed, ended
    jobs_requeued: int = 0  # attempts handed to no node, put back to wait for the session's resume


@dataclass(slots=True)
class _Seen:
    """A peer as this survivor saw it: its last renewal (the record's last_heartbeat_ms) and for how long
    of this survivor's own contact with Redis it has stayed that."""

    renewal_ms: int
    unrenewed_s: float = 0.0


@dataclass(slots=True)
class PeerWatch:
    """Pure: which peers have gone unrenewed for `lease_s` of this survivor's Redis contact. `saw(peers,
    at)` after each successful read of the fleet, `lost_contact()` after a failed one; time between a
    failure and the next success never counts, nor more than `max_step_s` between two reads (a survivor
    that was itself paused or starved)."""

    lease_s: float
    max_step_s: float
    _seen: dict[str, _Seen] = field(default_factory=dict)
    _last_read: float | None = None

    def lost_contact(self) -> None:
        self._last_read = None

    def saw(self, renewals: dict[str, int], at: float) -> list[str]:
        """The peers (instance id -> last renewal) read at `at` that are unrenewed for a lease now."""
        step = min(at - self._last_read, self.max_step_s) if self._last_read is not None else 0.0
        self._last_read = at
        for gone in self._seen.keys() - renewals.keys():
            del self._seen[gone]
        out = []
        for peer, renewal in renewals.items():
            seen = self._seen.get(peer)
            if seen is None or seen.renewal_ms != renewal:
                self._seen[peer] = _Seen(renewal)
                continue
            seen.unrenewed_s += max(0.0, step)
            if seen.unrenewed_s >= self.lease_s:
                out.append(peer)
        return out


class Recovery:
    def __init__(
        self,
        redis: Redis,
        prefix: str,
        scripts: ScriptBook,
        instances: InstanceRegistry,
        store: JobStore,
        relay: Relay,
        transport: FleetTransport,
        courier: Courier,
        instance_id: str,
        claim_keep_ms: int,
        interval_s: float,
        batch: int,
        metrics: SchedulerMetrics,
        clock: Clock,
        accept_timeout_ms: int = 2000,
        lease_ms: int = 0,
    ) -> None:
        """`batch`: inbox entries read at once from a dead instance's inbox. `accept_timeout_ms`: an attempt
        ASSIGNED longer than this at the takeover never reached its node. `lease_ms`: how long of this
        survivor's own Redis contact a peer must stay unrenewed to be claimed (0: as soon as its lease key
        lapsed, the old rule)."""
        self._peers = PeerWatch(lease_ms / 1000, max(2 * interval_s, 0.001))
        self._accept_timeout_ms = accept_timeout_ms
        # (due in ms since the epoch, job id, attempt, dead owner) of attempts to look at again
        self._rechecks: list[tuple[int, str, int, str]] = []
        self._redis = redis
        self._prefix = prefix
        self._scripts = scripts
        self._instances = instances
        self._store = store
        self._relay = relay
        self._transport = transport
        self._courier = courier
        self._id = instance_id
        self._claim_keep_ms = claim_keep_ms
        self._interval_s = interval_s
        self._batch = batch
        self._metrics = metrics
        self._clock = clock
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="fleet-recovery")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)

    async def _run(self) -> None:
        while True:
            raise_if_cancelling()
            await asyncio.sleep(self._interval_s)
            try:
                await self.sweep()
            except (RedisError, OSError) as exc:
                raise_if_cancelling()
                self._metrics.redis_errors.labels("recovery").inc()
                log.warning("recovery sweep failed", extra={"error": repr(exc)})
            except Exception:  # a bug, or the Redis client's (a torn connection): recovery must go on
                raise_if_cancelling()
                log.exception("recovery sweep failed; going on")

    async def sweep(self) -> list[Recovered]:
        """Takes over each dead instance this survivor is first to claim, and looks again at the attempts
        of earlier takeovers that were too young to judge."""
        try:
            await self._recheck_due()
            records = await self._instances.list()
        except (RedisError, OSError):
            self._peers.lost_contact()
            raise
        peers = {r.instance_id: r.last_heartbeat_ms for r in records if r.instance_id != self._id}
        unrenewed = set(self._peers.saw(peers, self._clock.monotonic()))
        out = []
        for record in records:
            due = record.instance_id in unrenewed or self._peers.lease_s <= 0
            if not record.alive and record.instance_id != self._id and due:
                recovered = await self.recover(record.instance_id)
                if recovered is not None:
                    out.append(recovered)
        return out

    async def recover(self, dead: str) -> Recovered | None:
        keys = InstanceKeys(self._prefix, dead)
        claim = await self._scripts.run(
            self._scripts.claim_instance(keys, claimer=self._id, keep_ms=self._claim_keep_ms)
        )
        if claim is not Claim.CLAIMED:
            return None
        log.warning("taking over what a dead instance left", extra={"instance_id": dead})
        returned, results, released = await self._inbox(keys)
        ended, requeued, freed = await self._jobs(keys)
        await self._instances.deregister(dead)
        done = Recovered(dead, returned, results, released + freed, ended, requeued)
        for what in ("handoffs_returned", "slots_released", "jobs_ended", "jobs_requeued"):
            self._metrics.recovered.labels(what).inc(getattr(done, what))
        self._metrics.recovered.labels("instances").inc()
        self._metrics.slots_reconciled.inc(released + freed)
        log.warning(
            "dead instance taken over",
            extra={
                "instance_id": dead,
                "handoffs_returned": returned,
                "results_recorded": results,
                "slots_released": released + freed,
                "jobs_ended": ended,
                "jobs_requeued": requeued,
            },
        )
        return done

    async def settle_own_inbox(self) -> None:
        """A graceful stop, once this instance left the fleet (no hand-off lands any more) and its inbox
        reader stopped: what is left in its inbox is settled as a survivor settles a dead instance's, since
        no survivor will claim an instance that left (issue 19)."""
        try:
            returned, results, released = await self._inbox(InstanceKeys(self._prefix, self._id))
        except (RedisError, OSError) as exc:  # its entries expire with the inbox
            log.warning("inbox not settled at the stop", extra={"error": repr(exc)})
            return
        if returned or results or released:
            log.info(
                "inbox settled at the stop",
                extra={
                    "handoffs_returned": returned,
                    "results_recorded": results,
                    "slots_released": released,
                },
            )

    async def _inbox(self, keys: InstanceKeys) -> tuple[int, int, int]:
        """Applies what was handed to the dead instance and never applied; the entries leave its inbox."""
        returned = results = released = 0
        async for fields in self._entries(keys):
            try:
                message = decode(fields)
            except (ValueError, KeyError):
                continue
            if isinstance(message, Assign):
                a = message.assignment
                why = f"instance {keys.instance_id}, holding node {message.node_id}, died"
                lost = Lost(
                    self._id, message.node_id, a.spec.job_id, a.attempt, why, False, self._clock.now_ms()
                )
                await self._courier.send(message.owner, lost)
                returned += 1
            elif isinstance(message, Relayed) and message.recorded:
                owner = await self._store.session_owner(parse_job_id(message.event.job_id)[0])
                if owner and owner != keys.instance_id and isinstance(message.event, JobOutput):
                    self._transport.forward(owner, message.node_id, message.event)
            elif isinstance(message, Relayed):
                results += await self._relay.settle_orphan(message.node_id, message.event)
            elif isinstance(message, Lost):
                await self._store.transition(
                    message.job_id, message.attempt, LIVE_STATES, JobState.CREATED, node_id=""
                )
                released += await self._store.release(message.node_id, message.job_id, message.attempt)
            elif isinstance(message, Reroute):
                why = f"instance {keys.instance_id}, holding node {message.node_id}, died"
                lost = Lost(
                    self._id,
                    message.node_id,
                    message.job_id,
                    message.attempt,
                    why,
                    False,
                    self._clock.now_ms(),
                )
                await self._courier.send(message.owner, lost)
        return returned, results, released

    async def _entries(self, keys: InstanceKeys) -> AsyncIterator[dict[bytes, bytes]]:
        """The dead inbox's entries, a batch at a time (each may carry an utterance's audio), each batch
        deleted once it was applied. Entries a new incarnation of the instance adds meanwhile stay."""
        after = "-"
        while entries := entries_of(await self._redis.xrange(keys.inbox, min=after, count=self._batch)):
            for _, fields in entries:
                yield fields
            ids = [entry_id for entry_id, _ in entries]
            await self._redis.xdel(keys.inbox, *ids)
            after = "(" + ids[-1].decode()

    async def _jobs(self, keys: InstanceKeys) -> tuple[int, int, int]:
        """The dead instance's sessions' jobs not yet final: left for the resume, except attempts that never
        reached a node (back to CREATED) and jobs of sessions that cannot be resumed (ended). Returns (ended,
        requeued, slots freed)."""
        ended = requeued = freed = 0
        sessions = [text(s) for s in await self._redis.smembers(keys.sessions)]
        for session_id in sessions:
            owner = await self._store.session_owner(session_id)
            if owner and owner != keys.instance_id:
                continue  # resumed on another instance, which watches its jobs
            for index in await self._store.live_jobs(session_id):
                record = await self._store.get(job_id(session_id, index))
                if record is None or record.state not in (JobState.CREATED, *LIVE_STATES):
                    continue
                if owner:  # resumable: only an attempt that never reached its node goes back
                    if record.state is JobState.ACCEPTED and record.node_id:
                        self._relay.orphan(record.job_id, record.attempt, record.node_id)  # deadline there
                    if record.state is not JobState.ASSIGNED or not record.node_id:
                        continue
                    due_ms = int(record.fields.get("assigned_ms", 0) or 0) + self._accept_timeout_ms
                    if self._clock.now_ms() <= due_ms:  # it may still be on its way: judged once due
                        self._rechecks.append((due_ms, record.job_id, record.attempt, keys.instance_id))
                        continue
                    to, changes = JobState.CREATED, {"node_id": ""}
                else:
                    to, changes = JobState.SKIPPED, {"reason": "owner_lost"}
                allowed = (JobState.ASSIGNED,) if owner else (JobState.CREATED, *LIVE_STATES)
                if not await self._store.transition(record.job_id, record.attempt, allowed, to, **changes):
                    continue  # it moved on meanwhile (a result landed): nothing to do
                if owner:
                    requeued += 1
                else:
                    ended += 1
                if record.state in LIVE_STATES and record.node_id:
                    why = f"its session's instance {keys.instance_id} died"
                    self._relay.forget(record.job_id, record.attempt)  # when this instance relayed it
                    self._transport.cancel(record.node_id, record.job_id, record.attempt, why)
                    freed += await self._store.release(record.node_id, record.job_id, record.attempt)
        if sessions:
            await self._redis.srem(keys.sessions, *sessions)
        return ended, requeued, freed

    async def _recheck_due(self) -> None:
        """Attempts of a dead owner that were ASSIGNED less than an accept timeout before its takeover: still
        ASSIGNED once the timeout passed, they never reached their node (its acceptance would have been
        recorded by the instance holding it): back to CREATED, cancelled, their slots freed."""
        now = self._clock.now_ms()
        due = [r for r in self._rechecks if r[0] < now]
        self._rechecks = [r for r in self._rechecks if r[0] >= now]
        for _, job, attempt, dead in due:
            record = await self._store.get(job)
            if record is None or record.state is not JobState.ASSIGNED or record.attempt != attempt:
                continue
            if await self._store.session_owner(parse_job_id(job)[0]) not in (dead, None):
                continue  # resumed meanwhile: its new owner watches it
            if not await self._store.transition(
                job, attempt, (JobState.ASSIGNED,), JobState.CREATED, node_id=""
            ):
                continue
            self._metrics.recovered.labels("jobs_requeued").inc()
            why = f"its session's instance {dead} died before the attempt reached the node"
            self._relay.forget(job, attempt)
            self._transport.cancel(record.node_id, job, attempt, why)
            if await self._store.release(record.node_id, job, attempt):
                self._metrics.slots_reconciled.inc()
                self._metrics.recovered.labels("slots_released").inc()
