"""Dispatcher: places each job attempt on a node and follows it to its end.

Per job: rank candidates on one snapshot, reserve a slot (Lua), start the attempt (Lua, fenced), send it
through the JobTransport. Node messages are applied only for the job's current attempt (Lua, fenced); the
slot of an attempt is released once whatever ends it (result, failure, rejection, deadline, node loss).
When every node of the pair is full the job waits in a per-pair FIFO until a slot frees or its queue
timeout passes (then its utterance is skipped with NO_CAPACITY, or NO_NODE when no node serves the pair).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from redis.exceptions import RedisError
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential_jitter

from lingua_grpc.clock import Clock
from lingua_grpc.dispatch._selection import Request, rank_candidates
from lingua_grpc.jobs import (
    LIVE_STATES,
    Assignment,
    JobAccepted,
    JobEvent,
    JobFailed,
    JobOutput,
    JobProgress,
    JobRejected,
    JobSpec,
    JobState,
    JobStore,
    SkipReason,
)
from lingua_grpc.metrics import SchedulerMetrics
from lingua_grpc.registry import LanguagePair, SnapshotCache
from lingua_grpc.tasks import cancel_and_wait, raise_if_cancelling

log = logging.getLogger(__name__)


class JobTransport(Protocol):
    """How an attempt reaches a node. Today: a node stream held by this instance."""

    def deliver(self, node_id: str, assignment: Assignment) -> str | None:
        """Sends the attempt; returns the id of the connection it went on, or None if it could not."""
        ...

    def cancel(self, node_id: str, job_id: str, attempt: int, reason: str) -> None: ...


class JobSink(Protocol):
    """Where a job's outcome goes: its session."""

    closed: bool

    def job_progress(self, index: int, event: JobProgress) -> None: ...

    def job_done(self, index: int, output: JobOutput, node_id: str, overhead: Overhead) -> None: ...

    def job_skipped(self, index: int, reason: SkipReason, message: str) -> None: ...


@dataclass(frozen=True, slots=True)
class Overhead:
    """Where a job's time went on the scheduler, for the result's timings."""

    queue_ms: int  # waiting for a free slot
    dispatch_us: int  # scheduler's own time from utterance end to the job written to the node's stream
    received_at: float  # monotonic time the node's result arrived (delivery time is measured from here)


@dataclass(frozen=True, slots=True)
class DispatchSettings:
    max_attempts: int
    accept_timeout_ms: int
    job_deadline_ms: int
    queue_retry_ms: int
    slot_release_retry_ms: int
    max_queued_per_pair: int = 1000


@dataclass(eq=False)
class Ticket:
    """One job from submission to its end."""

    spec: JobSpec
    sink: JobSink
    queue_timeout_s: float
    preferred_node: str | None = None
    attempt: int = 0  # the job's attempt number in Redis (a number may be spent without reaching a node)
    tries: int = 0  # attempts that reached a node: at most DispatchSettings.max_attempts
    node_id: str | None = None
    excluded: set[str] = field(default_factory=set)
    ended_at: float = 0.0  # monotonic time the utterance ended (as the session decided)
    submitted_at: float = 0.0
    written_at: float = 0.0  # monotonic time the current attempt was written to the node's stream
    connection_id: str | None = None  # the node connection the current attempt went on
    queued_until: float = 0.0
    placed_at: float = 0.0
    deadline: asyncio.TimerHandle | None = None
    recorded: bool = False  # the job exists in Redis
    done: bool = False


class Dispatcher:
    def __init__(
        self,
        store: JobStore,
        cache: SnapshotCache,
        transport: JobTransport,
        settings: DispatchSettings,
        metrics: SchedulerMetrics,
        clock: Clock,
        rng: random.Random | None = None,
    ) -> None:
        self._store = store
        self._cache = cache
        self._transport = transport
        self._settings = settings
        self._metrics = metrics
        self._clock = clock
        self._rng = rng or random.Random()
        self._queues: dict[LanguagePair, collections.deque[Ticket]] = {}
        self._live: dict[str, Ticket] = {}  # job id -> ticket whose attempt runs on a node
        self._kick = asyncio.Event()
        self._freed: collections.Counter[str] = collections.Counter()  # slots freed per node, not yet retried
        self._placing = 0  # submissions between their first Redis write and their outcome
        self._idle = asyncio.Event()
        self._pump: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[object]] = set()

    async def start(self) -> None:
        self._pump = asyncio.create_task(self._run_queues(), name="dispatch-queues")

    async def stop(self) -> None:
        await cancel_and_wait(self._pump)
        for ticket in list(self._live.values()):
            if ticket.deadline is not None:
                ticket.deadline.cancel()
        if self._tasks:  # slot releases and final states still being written
            await asyncio.wait(list(self._tasks), timeout=2)
        for task in list(self._tasks):
            await cancel_and_wait(task)

    @property
    def queued(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def backlog(self, pair: LanguagePair) -> tuple[int, float]:
        """Jobs of `pair` waiting for a node slot, and how long the oldest has waited (seconds)."""
        queue = self._queues.get(pair)
        if not queue:
            return 0, 0.0
        oldest = min(queue[0].submitted_at, queue[-1].submitted_at)  # retries go back to the head
        return len(queue), max(0.0, self._clock.monotonic() - oldest)

    @property
    def running(self) -> int:
        return len(self._live)

    async def wait_idle(self, timeout_s: float) -> bool:
        """Waits until no job runs or waits for a slot (for a graceful stop); False on timeout."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self._live or self.queued or self._placing:
            if loop.time() >= deadline:
                return False
            self._idle.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), min(0.05, deadline - loop.time()))
        return True

    async def submit(self, ticket: Ticket) -> Ticket:
        """Places the job now if a slot is free, else queues it behind the pair's waiting jobs.

        Callers must not cancel it midway (its Redis writes belong together: see StopBetweenSteps). A job
        whose session closed while it was being placed is ended here, its slot freed.
        """
        if ticket.sink.closed:  # the session ended while this job was being created
            ticket.done = True
            await self._record_end(ticket, JobState.SKIPPED, "session ended")
            return ticket
        now = self._clock.monotonic()
        ticket.submitted_at = ticket.submitted_at or now
        ticket.queued_until = ticket.queued_until or now + ticket.queue_timeout_s
        queue = self._queues.setdefault(ticket.spec.pair, collections.deque())
        if not ticket.recorded and len(queue) >= self._settings.max_queued_per_pair:
            # A full queue turns new jobs away before any Redis write; a job already running (a retry)
            # keeps its place.
            ticket.done = True
            why = f"{len(queue)} jobs already wait for a {ticket.spec.pair} node: the pair's queue is full"
            self._metrics.skips.labels(SkipReason.NO_CAPACITY.value).inc()
            ticket.sink.job_skipped(ticket.spec.index, SkipReason.NO_CAPACITY, why)
            return ticket
        self._placing += 1
        try:
            if queue or not await self._place(ticket, optimistic=not ticket.recorded):
                if not ticket.recorded:  # waiting for a slot: the job is recorded CREATED meanwhile
                    await self._store.start(ticket.spec, 0)
                    ticket.recorded = True
                queue.append(ticket)
                self._metrics.jobs_queued.set(self.queued)
                self._kick.set()
        finally:
            self._placing -= 1
            if not (self._live or self._placing):
                self._idle.set()
        if ticket.sink.closed and not ticket.done:  # the session closed while this job was being placed
            self._abandon(ticket)
        return ticket

    def cancel_session(self, session_id: str) -> None:
        """The session ended: queued jobs are dropped, running attempts cancelled on their nodes, and both
        recorded SKIPPED, so nothing is delivered later and every slot is freed. (A job still being placed
        is ended by its placement, which sees the session closed.)"""
        abandoned = [t for q in self._queues.values() for t in q if t.spec.session_id == session_id]
        abandoned += [t for t in self._live.values() if t.spec.session_id == session_id]
        for ticket in abandoned:
            if not ticket.done:
                self._abandon(ticket)

    def _abandon(self, ticket: Ticket) -> None:
        queue = self._queues.get(ticket.spec.pair)
        if queue is not None and ticket in queue:
            queue.remove(ticket)
            self._metrics.jobs_queued.set(self.queued)
        if self._live.get(ticket.spec.job_id) is ticket:
            self._end_attempt(ticket, "session ended")
        ticket.done = True
        self._spawn(self._record_end(ticket, JobState.SKIPPED, "session ended"))

    def assignment_written(self, job_id: str, attempt: int) -> None:
        ticket = self._live.get(job_id)
        if ticket is not None and ticket.attempt == attempt:
            ticket.written_at = self._clock.monotonic()

    async def on_event(self, node_id: str, event: JobEvent) -> None:
        received_at = self._clock.monotonic()
        ticket = self._live.get(event.job_id)
        if ticket is None or ticket.attempt != event.attempt or ticket.node_id != node_id:
            self._stale(node_id, event)
            return
        if isinstance(event, JobAccepted):
            self._arm_deadline(ticket, self._settings.job_deadline_ms)  # accepted: the job deadline runs now
            # Recorded off the node's read loop: its next message (often the result) need not wait for it.
            # A result that overtakes it completes the job, and the late ACCEPTED is then refused.
            self._spawn(self._record_accepted(ticket, event.attempt))
        elif isinstance(event, JobProgress):
            ticket.sink.job_progress(ticket.spec.index, event)
        elif isinstance(event, JobOutput):
            await self._complete(ticket, node_id, event, received_at)
        elif isinstance(event, JobRejected):
            log.info("job rejected", extra=_ids(ticket, reason=event.reason, message=event.message))
            await self._retry(ticket, f"rejected by {node_id}: {event.reason}")
        elif isinstance(event, JobFailed):
            log.warning(
                "job failed on node", extra=_ids(ticket, message=event.message, retryable=event.retryable)
            )
            if event.retryable:
                await self._retry(ticket, f"failed on {node_id}: {event.message}")
            else:
                await self._give_up(ticket, f"failed on {node_id}: {event.message}")

    def node_lost(self, node_id: str, connection_id: str | None = None) -> None:
        """A node connection ended (or, with no connection id, the node's lease lapsed): the attempts it
        ran go elsewhere. Attempts on a newer connection of the same node keep running."""
        lost = [
            t
            for t in self._live.values()
            if t.node_id == node_id and (connection_id is None or t.connection_id == connection_id)
        ]
        for ticket in lost:
            log.warning("node lost with a job running; re-dispatching", extra=_ids(ticket))
            self._spawn(self._retry(ticket, f"node {node_id} lost"))

    def adopt(
        self, node_id: str, connection_id: str, running: Iterable[tuple[str, int]]
    ) -> set[tuple[str, int]]:
        """The node registered on a new stream (`connection_id`) while it still holds `running` (job id,
        attempt): those of them still current here move to the new stream and keep running; they are
        returned. The other attempts of its older stream are left to `node_lost` when that stream ends."""
        held = set(running)
        moved: set[tuple[str, int]] = set()
        for ticket in self._live.values():
            key = (ticket.spec.job_id, ticket.attempt)
            if ticket.node_id == node_id and key in held:
                ticket.connection_id = connection_id
                moved.add(key)
        return moved

    def slot_freed(self, node_id: str | None = None) -> None:
        """A slot may be free (of this node, when known): queued jobs try it first."""
        if node_id is not None:
            self._freed[node_id] += 1
        self._kick.set()

    async def _place(self, ticket: Ticket, optimistic: bool = False, first: str | None = None) -> bool:
        """Tries the ranked candidates (`first` ahead, when it is one) until one takes the attempt; False
        when none has a free slot.

        Optimistic (a fresh job with nothing queued for its pair, or a queued one given a node whose slot
        just freed): the first candidate's reservation and the job's start go in one round trip. When that
        node turns out full, the attempt number is spent on it; the next candidates are tried reservation
        first, and a job left without a node is recorded CREATED again (it waits in the queue).
        """
        snapshot = self._cache.current  # the one snapshot read for this placement
        spec = ticket.spec
        request = Request(spec.pair, spec.tts, ticket.preferred_node)
        candidates = rank_candidates(snapshot, request, ticket.excluded, self._rng)
        if first is not None:
            if first in candidates:
                candidates.remove(first)
                candidates.insert(0, first)
            else:
                optimistic = False  # that node cannot take this job: no reason to expect a free slot
        unplaced = False  # the record names a node that holds no slot for its attempt
        for node_id in candidates:
            attempt = ticket.attempt + 1
            if optimistic:
                optimistic = False
                outcome, started = await self._store.reserve_and_start(node_id, spec, ticket.attempt)
                ticket.recorded = True
                if not outcome.held:
                    if started is None:
                        return True  # the job ended meanwhile
                    ticket.attempt, unplaced = started, True
                    continue
            else:
                outcome = await self._store.reserve(node_id, spec.job_id, attempt)
                if not outcome.held:
                    continue  # full, draining, or gone (maybe registering again): the next candidate
                _, started = await self._store.start(spec, ticket.attempt, node_id)
                ticket.recorded = True
            if started is None:  # the job ended meanwhile (or another instance started this attempt)
                await self._store.release(node_id, spec.job_id, attempt)
                return True
            if started != attempt:
                # Recorded anew (Redis lost the job): hold the slot under the attempt number it now has.
                log.warning("job record was lost; recorded it again", extra=_ids(ticket, attempt=started))
                await self._store.release(node_id, spec.job_id, attempt)
                if not (await self._store.reserve(node_id, spec.job_id, started)).held:
                    ticket.attempt, unplaced = started, True
                    continue
            deadline_ms = self._clock.now_ms() + self._settings.job_deadline_ms
            connection_id = self._transport.deliver(node_id, Assignment(spec, started, deadline_ms))
            if connection_id is None:
                await self._store.release(node_id, spec.job_id, started)
                ticket.attempt, unplaced = started, True
                ticket.excluded.add(node_id)
                continue
            ticket.attempt, ticket.node_id, ticket.connection_id = started, node_id, connection_id
            ticket.tries += 1
            ticket.placed_at = self._clock.monotonic()
            self._live[spec.job_id] = ticket
            self._arm_deadline(ticket, self._settings.accept_timeout_ms)
            self._metrics.jobs_dispatched.inc()
            log.debug("job dispatched", extra=_ids(ticket))
            return True
        if unplaced:
            await self._store.transition(
                spec.job_id, ticket.attempt, (JobState.ASSIGNED,), JobState.CREATED, node_id=""
            )
        return False

    def _arm_deadline(self, ticket: Ticket, ms: int) -> None:
        if ticket.deadline is not None:
            ticket.deadline.cancel()
        loop = asyncio.get_running_loop()
        ticket.deadline = loop.call_later(ms / 1000, self._deadline_passed, ticket, ticket.attempt, ms)

    def _deadline_passed(self, ticket: Ticket, attempt: int, ms: int) -> None:
        if ticket.attempt == attempt and self._live.get(ticket.spec.job_id) is ticket:
            log.warning("job attempt past its deadline; re-dispatching", extra=_ids(ticket, deadline_ms=ms))
            self._metrics.timeouts.inc()
            self._spawn(self._retry(ticket, f"node {ticket.node_id} gave no answer within {ms} ms"))

    async def _complete(self, ticket: Ticket, node_id: str, output: JobOutput, received_at: float) -> None:
        self._forget(ticket)
        try:
            applied, released = await self._store.complete_and_release(
                output.job_id,
                output.attempt,
                node_id,
                LIVE_STATES,
                source_text=output.source_text,
                translated_text=output.translated_text,
                asr_ms=output.asr_ms,
                translation_ms=output.translation_ms,
                tts_ms=output.tts_ms,
            )
        except RedisError as exc:
            # The result could not be recorded: the job must not be lost with it. It runs again once
            # Redis answers (the queue retries), and the slot is released then or with the node's lease.
            self._spawn(self._release(node_id, output.job_id, output.attempt))
            self._requeue(ticket, f"result not recorded: {exc!r}")
            return
        if released:
            self.slot_freed(node_id)
        if not applied:
            # Redis refused the result of the attempt this instance runs: the job's record was lost
            # (Redis restarted without its data) or moved on. Run it again rather than lose it; the new
            # attempt records the job anew.
            self._metrics.results_fenced.inc()
            self._requeue(ticket, "result refused by Redis (job record lost or moved on)")
            return
        ticket.done = True
        queued = ticket.placed_at - ticket.submitted_at
        dispatch = max(0.0, ticket.written_at - (ticket.ended_at or ticket.submitted_at) - queued)
        ticket.preferred_node = node_id
        overhead = Overhead(int(queued * 1000), int(dispatch * 1_000_000), received_at)
        ticket.sink.job_done(ticket.spec.index, output, node_id, overhead)

    def _requeue(self, ticket: Ticket, why: str) -> None:
        """Puts a job whose attempt ended without an outcome at the head of its pair's queue, without
        touching Redis (which may be what failed): the queue places it once Redis answers."""
        log.warning("job runs again", extra=_ids(ticket, reason=why))
        if ticket.tries >= self._settings.max_attempts:
            ticket.done = True
            self._spawn(self._give_up(ticket, f"{ticket.tries} attempts ended without a result; last: {why}"))
            return
        self._metrics.redispatches.inc()
        ticket.queued_until = self._clock.monotonic() + ticket.queue_timeout_s
        self._queues.setdefault(ticket.spec.pair, collections.deque()).appendleft(ticket)
        self._metrics.jobs_queued.set(self.queued)
        self._kick.set()

    async def _retry(self, ticket: Ticket, why: str) -> None:
        if self._live.get(ticket.spec.job_id) is not ticket:
            return
        failed_node = ticket.node_id
        self._end_attempt(ticket, why)
        if failed_node is not None:
            ticket.excluded.add(failed_node)
        if ticket.tries >= self._settings.max_attempts:
            await self._give_up(ticket, f"{ticket.tries} attempts failed; last: {why}")
            return
        self._metrics.redispatches.inc()
        ticket.queued_until = self._clock.monotonic() + ticket.queue_timeout_s
        await self.submit(ticket)

    async def _give_up(self, ticket: Ticket, why: str) -> None:
        self._end_attempt(ticket, why)
        ticket.done = True
        try:
            await self._record_end(ticket, JobState.FAILED, why)
        except RedisError as exc:  # the client hears of it all the same; the record expires with its TTL
            log.warning("job failure not recorded", extra=_ids(ticket, error=repr(exc)))
        self._metrics.skips.labels(SkipReason.FAILED.value).inc()
        ticket.sink.job_skipped(ticket.spec.index, SkipReason.FAILED, why)

    async def _record_accepted(self, ticket: Ticket, attempt: int) -> None:
        try:
            await self._store.transition(ticket.spec.job_id, attempt, (JobState.ASSIGNED,), JobState.ACCEPTED)
        except RedisError as exc:
            log.warning("job acceptance not recorded", extra=_ids(ticket, error=repr(exc)))

    async def _record_end(self, ticket: Ticket, state: JobState, reason: str) -> None:
        """Records the job's final state (fenced by its attempt) with the reason."""
        await self._store.transition(
            ticket.spec.job_id, ticket.attempt, (JobState.CREATED, *LIVE_STATES), state, reason=reason
        )

    def _forget(self, ticket: Ticket) -> str | None:
        """The attempt is over here: no longer live, no deadline. Returns the node it ran on."""
        if self._live.get(ticket.spec.job_id) is ticket:
            del self._live[ticket.spec.job_id]
            if not self._live:
                self._idle.set()
        if ticket.deadline is not None:
            ticket.deadline.cancel()
            ticket.deadline = None
        node_id, ticket.node_id = ticket.node_id, None
        return node_id

    def _end_attempt(self, ticket: Ticket, cancel_reason: str | None) -> None:
        """The attempt is over: forget it, free its slot, and tell the node when it may still run it."""
        node_id = self._forget(ticket)
        if node_id is None:
            return
        if cancel_reason is not None:
            self._transport.cancel(node_id, ticket.spec.job_id, ticket.attempt, cancel_reason)
        self._spawn(self._release(node_id, ticket.spec.job_id, ticket.attempt))

    async def _release(self, node_id: str, job_id: str, attempt: int) -> None:
        """Frees the attempt's slot. While Redis is unreachable this keeps trying, with backoff, for
        `slot_release_retry_ms`: a slot left held is capacity lost until the node registers again."""
        try:
            async for attempt_ in AsyncRetrying(
                retry=retry_if_exception_type(RedisError),
                wait=wait_exponential_jitter(multiplier=0.05, max=2.0),
                stop=stop_after_delay(self._settings.slot_release_retry_ms / 1000),
                before_sleep=lambda _: self._metrics.redis_errors.labels("release").inc(),
                reraise=True,
            ):
                with attempt_:
                    released = await self._store.release(node_id, job_id, attempt)
        except RedisError as exc:
            self._metrics.redis_errors.labels("release").inc()
            log.warning(
                "slot not released",
                extra={"job_id": job_id, "attempt": attempt, "node_id": node_id, "error": repr(exc)},
            )
            return
        if released:
            self.slot_freed(node_id)

    def _stale(self, node_id: str, event: JobEvent) -> None:
        """A message about an attempt that is not current here: refused (fenced), its slot freed."""
        if isinstance(event, JobOutput):
            self._metrics.results_fenced.inc()
            log.warning(
                "result of an old attempt refused",
                extra={"job_id": event.job_id, "attempt": event.attempt, "node_id": node_id},
            )
        if isinstance(event, JobOutput | JobFailed | JobRejected):
            self._spawn(self._release(node_id, event.job_id, event.attempt))

    async def _run_queues(self) -> None:
        while True:
            raise_if_cancelling()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._kick.wait(), self._settings.queue_retry_ms / 1000)
            self._kick.clear()
            try:
                await self._drain_queues()
            except (RedisError, OSError) as exc:
                raise_if_cancelling()
                log.warning("queued jobs not placed", extra={"error": repr(exc)})
            except Exception:  # a bug must not stop every queued job of the instance for good
                raise_if_cancelling()
                log.exception("queue pump failed; going on")

    async def _drain_queues(self) -> None:
        """Places queued heads, first on the nodes whose slots were freed since the last turn (one round
        trip each); without such a node (a periodic retry) every candidate is tried, reservation first."""
        now = self._clock.monotonic()
        for queue in self._queues.values():
            while queue:
                ticket = queue[0]
                if ticket.done:
                    queue.popleft()
                elif now >= ticket.queued_until:
                    queue.popleft()
                    await self._queue_timeout(ticket, ticket.spec.pair)
                elif await self._place(ticket, *self._freed_slot(ticket)):
                    # The placement awaited Redis: the queue may have changed meanwhile (a session that
                    # closed took its tickets out), so take out this ticket, wherever it is now.
                    with contextlib.suppress(ValueError):
                        queue.remove(ticket)
                else:
                    break
        self._metrics.jobs_queued.set(self.queued)
        self._freed.clear()  # every queue got its turn; what is left freed no waiting job could use

    def _freed_slot(self, ticket: Ticket) -> tuple[bool, str | None]:
        """A node with a freed slot that can take this job (consumed), as `_place`'s optimistic first."""
        freed = self._freed
        serving = {n.node_id for n in self._cache.current.nodes_for(ticket.spec.pair)}
        for node_id in freed:
            if node_id in serving and node_id not in ticket.excluded:
                freed[node_id] -= 1
                if freed[node_id] <= 0:
                    del freed[node_id]
                return True, node_id
        return False, None

    async def _queue_timeout(self, ticket: Ticket, pair: LanguagePair) -> None:
        reason = SkipReason.NO_CAPACITY if self._cache.current.serves(pair) else SkipReason.NO_NODE
        why = f"no free slot for {pair} within {ticket.queue_timeout_s * 1000:.0f} ms"
        if reason is SkipReason.NO_NODE:
            why = f"no registered node serves {pair}"
        ticket.done = True
        await self._record_end(ticket, JobState.SKIPPED, reason.value)
        self._metrics.skips.labels(reason.value).inc()
        ticket.sink.job_skipped(ticket.spec.index, reason, why)

    def _spawn(self, coro: Coroutine[object, object, object]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[object]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("dispatch task failed", exc_info=task.exception())


def _ids(ticket: Ticket, **extra: object) -> dict[str, object]:
    return {"job_id": ticket.spec.job_id, "attempt": ticket.attempt, "node_id": ticket.node_id, **extra}
