"""Dispatcher: follows each job from submission to its one ending.

A job (`Ticket`) is NEW, QUEUED, RUNNING on a node, BETWEEN attempts, or ENDED (`Phase`). Placement
(`Placer`) puts its next attempt on a node; node messages are applied only for the job's current attempt
(Lua, fenced); the slot of an attempt is released once whatever ends it (result, failure, rejection, deadline,
node loss). When every node of the pair is full the job waits in its pair's FIFO (`PairQueues`) until a slot
frees or its queue timeout passes. Every ending goes through `_finish`, which records, counts and notifies.

A busy node is not a lost one. A node gets no more attempts than its slots (the Lua reservation), so it
never queues work it cannot start; an attempt runs again only when its node is lost (its stream ends, its
lease lapses: no heartbeat), fails or rejects it, or it passes its deadline (`attempt_deadline_ms`: the job
deadline plus a share of the utterance's length, counted from the assignment and again from acceptance).
Never for being slow to accept: under a burst that is what every node is, and moving work from one busy node
to another only doubles it (a metastable retry storm). Attempts failed by live nodes run again only within a
retry budget (`RetryBudget`). A job Redis cannot record yet waits for it (`store_wait_ms`), its audio held.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass

from redis.exceptions import OutOfMemoryError, RedisError
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential_jitter

from lingua_grpc.clock import Clock
from lingua_grpc.dispatch._budget import RetryBudget
from lingua_grpc.dispatch._placement import VIA, JobTransport, Placed, Placement, Placer
from lingua_grpc.dispatch._queues import PairQueues
from lingua_grpc.dispatch._ticket import Attempt, Overhead, Phase, Ticket
from lingua_grpc.jobs import (
    LIVE_STATES,
    JobAccepted,
    JobEvent,
    JobFailed,
    JobOutput,
    JobProgress,
    JobRejected,
    JobState,
    JobStore,
    SkipReason,
    output_from_record,
    recorded_attempts,
)
from lingua_grpc.metrics import SchedulerMetrics
from lingua_grpc.registry import LanguagePair, SnapshotCache
from lingua_grpc.tasks import cancel_and_wait, raise_if_cancelling

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DispatchSettings:
    max_attempts: int  # attempts that reached a node
    job_deadline_ms: int
    queue_retry_ms: int
    slot_release_retry_ms: int
    max_queued_per_pair: int = 1000
    deadline_audio_factor: int = 2  # seconds of deadline per second of audio
    retry_budget_tokens: int = 100
    retry_budget_refill_percent: int = 10
    store_wait_ms: int = 30000
    store_wait_max_bytes: int = 64 * 1024 * 1024

    def attempt_deadline_ms(self, duration_ms: int) -> int:
        """How long an attempt of an utterance of `duration_ms` may take on its node."""
        return self.job_deadline_ms + self.deadline_audio_factor * duration_ms

    @property
    def max_placements(self) -> int:
        """Attempts handed towards nodes, reached or not: bounds a job whose attempts never reach one."""
        return 3 * self.max_attempts


@dataclass(frozen=True, slots=True)
class Ending:
    """How a job ends without a result: recorded as `state` with `reason`, told to its session as a skip
    (`skip`), unless nobody is left to tell (`skip` None: the session is gone)."""

    state: JobState
    reason: str
    why: str
    skip: SkipReason | None


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
        self._placer = Placer(
            store, cache, transport, settings.attempt_deadline_ms, clock, rng or random.Random()
        )
        self._budget = RetryBudget(settings.retry_budget_tokens, settings.retry_budget_refill_percent / 100)
        self._store_wait_bytes = 0  # audio of the jobs waiting for Redis to record them
        self._queues = PairQueues(settings.max_queued_per_pair)
        self._live: dict[str, Ticket] = {}  # job id -> ticket RUNNING on a node (an index of that phase)
        # Job id -> what was said about it while its attempt was being handed over (another instance's reply
        # can overtake the hand-off's own return): applied, in order, once the placement's outcome is known.
        self._overtaking: dict[str, list[Callable[[], Awaitable[None]]]] = {}
        self._kick = asyncio.Event()
        self._placing = 0  # submissions between their first Redis write and their outcome
        self._idle = asyncio.Event()
        self._pump: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[object]] = set()
        # Called with (job id, attempt, node id, connection id, new owner) for each running attempt on this
        # instance's node streams whose session's stream ended here while the session lives on.
        self.on_detached: Callable[[str, int, str, str, str], None] | None = None

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
        return len(self._queues)

    def backlog(self, pair: LanguagePair) -> tuple[int, float]:
        """Jobs of `pair` waiting for a node slot, and how long the oldest has waited (seconds)."""
        oldest = self._queues.oldest_submitted(pair)
        if oldest is None:
            return 0, 0.0
        return self._queues.waiting(pair), max(0.0, self._clock.monotonic() - oldest)

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
            await self._finish(ticket, _SESSION_ENDED)
            return ticket
        now = self._clock.monotonic()
        ticket.submitted_at = ticket.submitted_at or now
        ticket.queued_until = ticket.queued_until or now + ticket.queue_timeout_s
        pair = ticket.spec.pair
        if not ticket.recorded and self._queues.full(pair):
            # A full queue turns new jobs away before any Redis write; a job already running (a retry)
            # keeps its place.
            why = (
                f"{self._queues.waiting(pair)} jobs already wait for a {pair} node: the pair's queue is full"
            )
            await self._finish(ticket, Ending(JobState.SKIPPED, "queue_full", why, SkipReason.NO_CAPACITY))
            return ticket
        self._placing += 1
        try:
            try:
                placed = not self._queues.waiting(pair) and await self._try_place(
                    ticket, optimistic=not ticket.recorded
                )
                if not placed and not ticket.recorded:  # waiting for a slot: recorded CREATED meanwhile
                    await self._record_waiting(ticket)
            except RedisError as exc:
                placed = False
                if not await self._wait_for_store(ticket, exc):
                    return ticket
            if not placed:
                self._queue(ticket, front=False)
        finally:
            self._placing -= 1
            if not (self._live or self._placing):
                self._idle.set()
        if ticket.sink.closed and not ticket.ended:  # the session closed while this job was being placed
            self._abandon(ticket)
        return ticket

    async def _record_waiting(self, ticket: Ticket) -> None:
        """Records a job that waits for a slot, CREATED with no node (idempotent)."""
        await self._store.start(ticket.spec, 0, answers_sent=ticket.answers_sent)
        self._mark_recorded(ticket)

    def _mark_recorded(self, ticket: Ticket) -> None:
        if ticket.recorded:
            return
        ticket.recorded = True
        ticket.sink.job_recorded(ticket.spec.index)

    async def _wait_for_store(self, ticket: Ticket, exc: RedisError) -> bool:
        """Redis did not answer a write of the job's placement (an outage, a restart, a lost reply): the job
        waits for it, its audio held, within `store_wait_ms` and `store_wait_max_bytes`; the queue tries it
        again (repeating first any write whose outcome is unknown). False when it cannot wait: it is ended
        (STORE_UNAVAILABLE, or STORAGE_FULL when Redis is out of memory, which waiting does not mend)."""
        self._metrics.redis_errors.labels("place").inc()
        if isinstance(exc, OutOfMemoryError):
            why = "the scheduler's store is full: try again later"
            await self._finish(ticket, Ending(JobState.SKIPPED, "storage_full", why, SkipReason.STORAGE_FULL))
            return False
        if ticket.store_wait_until:
            return True
        size = len(ticket.spec.audio)
        if self._store_wait_bytes + size > self._settings.store_wait_max_bytes:
            why = (
                f"the scheduler's store (Redis) does not answer ({exc!r}) and"
                f" {self._store_wait_bytes} bytes of audio already wait for it"
            )
            await self._finish(ticket, _store_unavailable(why))
            return False
        log.warning("job waits for Redis to record it", extra=_ids(ticket, error=repr(exc)))
        ticket.store_wait_until = self._clock.monotonic() + self._settings.store_wait_ms / 1000
        self._store_wait_bytes += size
        self._metrics.jobs_waiting_for_store.set(self._store_wait_bytes)
        return True

    def _store_answered(self, ticket: Ticket) -> None:
        """The job no longer waits for Redis: its queue timeout runs again from now."""
        if self._stop_store_wait(ticket):
            ticket.queued_until = self._clock.monotonic() + ticket.queue_timeout_s

    def _stop_store_wait(self, ticket: Ticket) -> bool:
        if not ticket.store_wait_until:
            return False
        ticket.store_wait_until = 0.0
        self._store_wait_bytes -= len(ticket.spec.audio)
        self._metrics.jobs_waiting_for_store.set(self._store_wait_bytes)
        return True

    @property
    def store_wait_bytes(self) -> int:
        """Audio held for jobs that wait for Redis to record them (while any waits, new sessions are
        refused)."""
        return self._store_wait_bytes

    def cancel_session(self, session_id: str) -> None:
        """The session ended: queued jobs are dropped, running attempts cancelled on their nodes, and both
        recorded SKIPPED, so nothing is delivered later and every slot is freed. (A job still being placed
        is ended by its placement, which sees the session closed.)"""
        abandoned = self._queues.of_session(session_id)
        abandoned += [t for t in self._live.values() if t.spec.session_id == session_id]
        for ticket in abandoned:
            self._abandon(ticket)

    def detach_session(self, session_id: str) -> None:
        """The session's stream ended but the session lives on (`sink.handed_to` says for whom): its jobs
        are left as they are in Redis, neither cancelled nor ended. Queued ones wait, recorded CREATED, for the
        instance that resumes the session; running ones keep running on their nodes: those on this
        instance's node streams are handed to `on_detached` (the relay routes what their nodes say)."""
        for ticket in self._queues.of_session(session_id):
            self._detach(ticket)
        for ticket in [t for t in self._live.values() if t.spec.session_id == session_id]:
            self._detach(ticket)

    def _detach(self, ticket: Ticket) -> None:
        if ticket.ended:
            return
        running = self._live.get(ticket.spec.job_id) is ticket
        ticket.phase = Phase.ENDED
        self._stop_store_wait(ticket)
        if self._queues.remove(ticket):
            self._metrics.jobs_queued.set(self.queued)
        if ticket.pending is not None:  # writes whose outcome is unknown: undone, so the job waits CREATED
            pending, ticket.pending = ticket.pending, None
            self._spawn(self._unplace(pending.node_id, ticket.spec.job_id, pending.number + 1))
        if not running:
            return
        attempt = self._leave_node(ticket)
        ticket.phase = Phase.ENDED
        connection = attempt.connection_id or ""
        if attempt.node_id is not None and not connection.startswith(VIA) and self.on_detached is not None:
            self.on_detached(
                ticket.spec.job_id, attempt.number, attempt.node_id, connection, ticket.sink.handed_to or ""
            )

    def take_over(self, job_id: str, attempt: int) -> tuple[str, str] | None:
        """Another instance resumed this job's session: if the attempt runs on one of this instance's node
        streams for a session here, it leaves the session (which is being ended) and the node id and
        connection id are returned (the relay routes the node's messages to the new owner)."""
        ticket = self._live.get(job_id)
        if ticket is None or ticket.attempt.number != attempt or ticket.attempt.node_id is None:
            return None
        connection = ticket.attempt.connection_id or ""
        if connection.startswith(VIA):
            return None
        node_id = ticket.attempt.node_id
        self._leave_node(ticket)
        ticket.phase = Phase.ENDED
        return node_id, connection

    def adopt_running(self, ticket: Ticket, accepted: bool) -> None:
        """A resumed session's job whose attempt (`ticket.attempt`) runs on a node: watched from now on as if
        placed here. Its deadline runs from now: the job deadline once `accepted`, else the accept timeout
        (until its holder says the node has it)."""
        ticket.phase = Phase.RUNNING
        ticket.recorded = True
        ticket.tries = max(ticket.tries, 1)
        ticket.placements = max(ticket.placements, 1)
        ticket.attempt = dataclasses.replace(ticket.attempt, accepted=accepted)
        self._live[ticket.spec.job_id] = ticket
        self._arm_deadline(ticket, self._settings.attempt_deadline_ms(ticket.spec.duration_ms))

    def _abandon(self, ticket: Ticket) -> None:
        if ticket.sink.handed_to is not None:  # the session lives on: its job is left as it is
            self._detach(ticket)
            return
        if self._close(ticket, _SESSION_ENDED):
            self._spawn(self._record_and_tell(ticket, _SESSION_ENDED))

    def assignment_written(self, job_id: str, attempt: int) -> None:
        ticket = self._live.get(job_id)
        if ticket is not None and ticket.attempt.number == attempt:
            ticket.attempt = dataclasses.replace(ticket.attempt, written_at=self._clock.monotonic())

    async def on_event(self, node_id: str, event: JobEvent, recorded: bool = False) -> None:
        """What a node says about an attempt (`recorded`: a result another instance already recorded)."""
        received_at = self._clock.monotonic()
        ticket = self._live.get(event.job_id)
        if self._held_back(event.job_id, ticket, lambda: self.on_event(node_id, event, recorded)):
            return
        if ticket is None or ticket.attempt.number != event.attempt or ticket.attempt.node_id != node_id:
            self._stale(node_id, event, owned=ticket is not None, recorded=recorded)
            return
        if recorded and isinstance(event, JobOutput):
            self._leave_node(ticket)
            self._deliver(ticket, node_id, event, received_at, recorded=True)
            return
        if isinstance(event, JobAccepted):
            ticket.attempt = dataclasses.replace(ticket.attempt, accepted=True)
            # The node started it: its deadline runs again from now.
            self._arm_deadline(ticket, self._settings.attempt_deadline_ms(ticket.spec.duration_ms))
            # Recorded off the node's read loop: its next message (often the result) need not wait for it.
            # A result that overtakes it completes the job, and the late ACCEPTED is then refused.
            self._spawn(self._record_accepted(ticket, event.attempt))
        elif isinstance(event, JobProgress):
            ticket.sink.job_progress(ticket.spec.index, event)
        elif isinstance(event, JobOutput):
            await self._complete(ticket, node_id, event, received_at)
        elif isinstance(event, JobRejected):
            log.info("job rejected", extra=_ids(ticket, reason=event.reason, detail=event.message))
            why = f"rejected by {node_id}: {event.reason}"
            if event.reason == AT_CAPACITY:
                # Busy, not unable: its slot was still taken by an attempt being cancelled there (this
                # instance's count and the node's differ for a moment). Not held against the node or the
                # job; it waits its queue's next turn rather than being thrown back at once.
                await self._attempt_failed(ticket, why, exclude=False, reached=False, wait_turn=True)
            else:
                await self._attempt_failed(ticket, why, by_live_node=True)
        elif isinstance(event, JobFailed):
            log.warning(
                "job failed on node", extra=_ids(ticket, detail=event.message, retryable=event.retryable)
            )
            why = f"failed on {node_id}: {event.message}"
            if event.retryable:
                await self._attempt_failed(ticket, why, by_live_node=True)
            else:
                await self._finish(ticket, _failed(why))

    def node_lost(self, node_id: str, connection_id: str | None = None) -> None:
        """A node connection ended (or, with no connection id, the node's lease lapsed): the attempts it
        ran go elsewhere. Attempts on a newer connection of the same node keep running."""
        lost = [
            t
            for t in self._live.values()
            if t.attempt.node_id == node_id
            and (connection_id is None or t.attempt.connection_id == connection_id)
        ]
        for ticket in lost:
            log.warning("node lost with a job running; re-dispatching", extra=_ids(ticket))
            reached = ticket.attempt.reached_node  # else it never left this instance: it does not count
            self._spawn(self._attempt_failed(ticket, f"node {node_id} lost", reached=reached))

    def adopt(
        self, node_id: str, connection_id: str, running: Iterable[tuple[str, int]]
    ) -> set[tuple[str, int]]:
        """The node registered on a new stream (`connection_id`, already the node's link) while it still
        holds `running` (job id, attempt). The attempts of this instance's jobs among them move to the new
        stream and keep running; they are returned (the caller settles the others). The other attempts of
        the older stream are left to `node_lost` when that stream ends."""
        held = set(running)
        moved: set[tuple[str, int]] = set()
        for ticket in self._live.values():
            key = (ticket.spec.job_id, ticket.attempt.number)
            if ticket.attempt.node_id == node_id and key in held:
                ticket.attempt = dataclasses.replace(
                    ticket.attempt, connection_id=connection_id, accepted=True
                )
                moved.add(key)
                # The node runs it: accepted, whether or not its acceptance reached this instance (it may
                # have gone to a stream, or an instance, that is gone). Its deadline runs from now.
                self._arm_deadline(ticket, self._settings.attempt_deadline_ms(ticket.spec.duration_ms))
                self._spawn(self._record_accepted(ticket, ticket.attempt.number))
        return moved

    def attempt_lost(
        self, job_id: str, attempt: int, why: str, node_failed: bool, node_id: str | None = None
    ) -> None:
        """The instance holding the node's stream could not run this attempt: it runs again (elsewhere,
        when the node itself failed it: `node_failed`; otherwise the hand-off never reached the node, and
        the attempt does not count against the job's limit). An attempt this instance no longer watches (its
        session's stream ended) gets its slot freed, when `node_id` is given."""
        ticket = self._live.get(job_id)

        async def again() -> None:
            self.attempt_lost(job_id, attempt, why, node_failed, node_id)

        if self._held_back(job_id, ticket, again):
            return
        if ticket is not None and ticket.attempt.number == attempt:
            snapshot = self._cache.current
            node = snapshot.nodes.get(ticket.attempt.node_id or "")
            via = ticket.attempt.connection_id or ""
            if not node_failed and node is not None and via == VIA + node.instance_id:
                # The snapshot still names as the node's holder the instance that says it does not hold it
                # (the node moved, or its holder came back without it): not that node again for this job until
                # the registry says where it is. (A snapshot that names another holder by now is tried at once.)
                ticket.unreachable[node.node_id] = snapshot.stamp
            self._spawn(self._attempt_failed(ticket, why, exclude=node_failed, reached=node_failed))
        elif ticket is None and node_id is not None:
            self._spawn(self._unplace(node_id, job_id, attempt))

    def free_slot(self, node_id: str, job_id: str, attempt: int) -> None:
        """Frees an attempt's slot in the background (retried while Redis is unreachable), then lets
        queued jobs try it: for attempts this instance does not run (relayed, or listed by a node but no
        longer current)."""
        self._spawn(self._release(node_id, job_id, attempt))

    def watches(self, job_id: str, attempt: int, node_id: str) -> bool:
        """Whether the attempt runs on the node for a session here."""
        ticket = self._live.get(job_id)
        return ticket is not None and ticket.attempt.number == attempt and ticket.attempt.node_id == node_id

    def unplace(self, node_id: str, job_id: str, attempt: int) -> None:
        """An attempt no session here watches failed: the job waits, CREATED, for whoever resumes its
        session (fenced by the attempt); its slot is freed. In the background."""
        self._spawn(self._unplace(node_id, job_id, attempt))

    def slot_freed(self, node_id: str | None = None) -> None:
        """A slot may be free (of this node, when known): queued jobs try it first."""
        if node_id is not None:
            self._queues.slot_freed(node_id)
        self._kick.set()

    # The job's life: placed, running, between attempts, ended.

    async def _try_place(self, ticket: Ticket, optimistic: bool = False, first: str | None = None) -> bool:
        """One placement try; True when the job no longer waits (on a node, or ended meanwhile). What is
        said about the job meanwhile is applied after it (see `_held_back`)."""
        job_id = ticket.spec.job_id
        self._overtaking[job_id] = []
        try:
            return self._placed(ticket, await self._placer.place(ticket, optimistic, first))
        finally:
            if overtaking := self._overtaking.pop(job_id, None):
                self._spawn(self._apply_in_order(overtaking))

    def _held_back(self, job_id: str, ticket: Ticket | None, apply: Callable[[], Awaitable[None]]) -> bool:
        """Whether what a node (or the instance holding it) says about the job waits for a placement of it
        under way: an attempt handed to another instance can be answered (lost, failed, accepted, done)
        before the hand-off returns here. Applied at once, it would find no running attempt and be dropped
        (a lost attempt would then wait for its deadline, and count). A ticket running here is not held."""
        waiting = self._overtaking.get(job_id)
        if waiting is None or ticket is not None:
            return False
        waiting.append(apply)
        return True

    @staticmethod
    async def _apply_in_order(steps: list[Callable[[], Awaitable[None]]]) -> None:
        for step in steps:
            await step()

    def _placed(self, ticket: Ticket, placement: Placement) -> bool:
        if placement.recorded:
            self._mark_recorded(ticket)
        self._store_answered(ticket)
        ticket.attempt = placement.attempt
        if placement.outcome is Placed.NO_SLOT:
            return False
        if placement.outcome is Placed.ENDED:
            # Final in Redis (its outcome, recorded elsewhere, goes to the session), or another instance runs
            # this attempt (the session moved there): nothing more for this one to do.
            ticket.phase = Phase.ENDED
            self._spawn(self._settle_from_store(ticket))
            return True
        ticket.phase = Phase.RUNNING
        ticket.tries += 1  # given back if the attempt turns out never to have reached the node
        ticket.placements += 1
        self._live[ticket.spec.job_id] = ticket
        self._arm_deadline(ticket, self._settings.attempt_deadline_ms(ticket.spec.duration_ms))
        self._metrics.jobs_dispatched.inc()
        log.debug("job dispatched", extra=_ids(ticket))
        return True

    def _queue(self, ticket: Ticket, front: bool, kick: bool = True) -> None:
        ticket.phase = Phase.QUEUED
        if front:
            self._queues.push_front(ticket)
        else:
            self._queues.append(ticket)
        self._metrics.jobs_queued.set(self.queued)
        if kick:
            self._kick.set()

    def _arm_deadline(self, ticket: Ticket, ms: int) -> None:
        if ticket.deadline is not None:
            ticket.deadline.cancel()
        loop = asyncio.get_running_loop()
        ticket.deadline = loop.call_later(ms / 1000, self._deadline_passed, ticket, ticket.attempt.number, ms)

    def _deadline_passed(self, ticket: Ticket, attempt: int, ms: int) -> None:
        if ticket.attempt.number == attempt and self._live.get(ticket.spec.job_id) is ticket:
            log.warning("job attempt past its deadline; re-dispatching", extra=_ids(ticket, deadline_ms=ms))
            self._metrics.timeouts.inc()
            why = f"node {ticket.attempt.node_id} gave no answer within {ms} ms"
            self._spawn(self._attempt_failed(ticket, why, by_live_node=True))

    async def _complete(self, ticket: Ticket, node_id: str, output: JobOutput, received_at: float) -> None:
        self._leave_node(ticket)
        try:
            completed, released = await self._store.complete_and_release(
                output, node_id, attempts=ticket.tries
            )
        except RedisError as exc:
            # The result could not be recorded: the job must not be lost with it. It runs again once
            # Redis answers (the queue retries), and the slot is released then or with the node's lease.
            self._spawn(self._release(node_id, output.job_id, output.attempt))
            await self._run_again(ticket, f"result not recorded: {exc!r}", through_queue=True)
            return
        if released:
            self.slot_freed(node_id)
        if completed.applied:
            self._budget.succeeded()
            self._metrics.retry_budget.set(self._budget.tokens)
        if not completed.applied:
            # Redis refused the result of the attempt this instance runs: the job's record was lost
            # (Redis restarted without its data) or moved on. Run it again rather than lose it; the new
            # attempt records the job anew.
            self._metrics.results_fenced.inc()
            await self._run_again(
                ticket, "result refused by Redis (job record lost or moved on)", through_queue=True
            )
            return
        if completed.owner and completed.owner != self._store.instance_id:
            # The session was resumed on another instance while this one ran the job: it delivers.
            ticket.phase = Phase.ENDED
            self._transport.forward(completed.owner, node_id, output)
            return
        self._deliver(ticket, node_id, output, received_at)

    def _deliver(
        self, ticket: Ticket, node_id: str, output: JobOutput, received_at: float, recorded: bool = False
    ) -> None:
        """The job's result (recorded) goes to its session."""
        attempt = ticket.attempt
        queued = attempt.placed_at - ticket.submitted_at
        written = attempt.written_at or attempt.placed_at  # another instance's node: when it was handed off
        dispatch = max(0.0, written - (ticket.ended_at or ticket.submitted_at) - queued)
        ticket.preferred_node = node_id
        ticket.phase = Phase.ENDED  # recorded COMPLETED by the script above
        self._metrics.queue_wait_seconds.observe(queued)
        self._metrics.dispatch_seconds.observe(dispatch)
        overhead = Overhead(
            int(queued * 1000), int(dispatch * 1_000_000), received_at, recorded, attempts=ticket.tries
        )
        ticket.sink.job_done(ticket.spec.index, output, node_id, overhead)

    async def _settle_from_store(self, ticket: Ticket) -> None:
        """Placement found the job final in Redis (its result was recorded elsewhere, e.g. while its session
        moved between instances): the recorded outcome goes to the session."""
        if ticket.sink.closed:
            return
        try:
            stored = (await self._store.records(ticket.spec.session_id, [ticket.spec.index]))[0]
        except RedisError as exc:
            log.warning("job outcome not read", extra=_ids(ticket, error=repr(exc)))
            return
        record = stored.record
        if record is None or record.state in (JobState.CREATED, *LIVE_STATES):
            return  # another instance runs it (the session moved): that one answers
        if record.state is JobState.COMPLETED:
            output = output_from_record(record.fields, stored.tts_audio)
            now = self._clock.monotonic()
            overhead = Overhead(0, 0, now, True, attempts=recorded_attempts(record.fields))
            ticket.sink.job_done(ticket.spec.index, output, record.node_id, overhead)
        else:
            reason = record.fields.get("reason", record.state.value.lower())
            skip = skip_reason_for(record.state, reason)
            ticket.sink.job_skipped(ticket.spec.index, skip, f"recorded {record.state.value}: {reason}")

    async def _attempt_failed(
        self,
        ticket: Ticket,
        why: str,
        exclude: bool = True,
        reached: bool = True,
        by_live_node: bool = False,
        wait_turn: bool = False,
    ) -> None:
        """The running attempt ended without an outcome (rejected, failed, deadline, node lost): it is
        cancelled on its node, its slot freed, and the job placed again (elsewhere, with `exclude`). An
        attempt that never `reached` its node does not count against the job's attempts; one failed
        `by_live_node` (not lost with its node) runs again only within the retry budget."""
        if self._live.get(ticket.spec.job_id) is not ticket:
            return
        attempt = self._end_attempt(ticket, why)
        if exclude and attempt.node_id is not None:
            ticket.excluded.add(attempt.node_id)
        if not reached:
            ticket.tries -= 1
        if by_live_node:
            self._budget.failed()
            self._metrics.retry_budget.set(self._budget.tokens)
            if not self._budget.allows_retry():
                self._metrics.retries_throttled.inc()
                why = f"{why}; not run again: this instance's retry budget is spent (too many attempts fail)"
                await self._finish(ticket, _failed(why))
                return
        await self._run_again(ticket, why, through_queue=wait_turn, kick=not wait_turn)

    async def _run_again(self, ticket: Ticket, why: str, through_queue: bool, kick: bool = True) -> None:
        """Places the job again, within its attempts. `through_queue`: ahead of its pair's queue without
        touching Redis now (Redis may be what failed; the queue places it once Redis answers), at once or,
        without `kick`, at the queue's next turn; else at once."""
        if ticket.tries >= self._settings.max_attempts:
            await self._finish(ticket, _failed(f"{ticket.tries} attempts failed; last: {why}"))
            return
        if ticket.placements >= self._settings.max_placements:
            why = f"{ticket.placements} attempts were placed, {ticket.tries} reached a node; last: {why}"
            await self._finish(ticket, _failed(why))
            return
        if not ticket.spec.audio:  # a resumed session's job whose audio is no longer kept
            await self._finish(ticket, _failed(f"{why}; its audio is no longer kept for another attempt"))
            return
        log.warning("job runs again", extra=_ids(ticket, reason=why))
        self._metrics.redispatches.inc()
        ticket.queued_until = self._clock.monotonic() + ticket.queue_timeout_s
        if through_queue:
            self._queue(ticket, front=True, kick=kick)
        else:
            await self.submit(ticket)

    async def _finish(self, ticket: Ticket, ending: Ending) -> None:
        """Every ending without a result goes through here (see `_close`, then `_record_and_tell`)."""
        if self._close(ticket, ending):
            await self._record_and_tell(ticket, ending)

    def _close(self, ticket: Ticket, ending: Ending) -> bool:
        """At once: the job is ENDED, out of its queue, off its node (cancelled there, slot freed). False
        when it had already ended."""
        if ticket.ended:
            return False
        ticket.phase = Phase.ENDED
        self._stop_store_wait(ticket)
        if self._queues.remove(ticket):
            self._metrics.jobs_queued.set(self.queued)
        if self._live.get(ticket.spec.job_id) is ticket:
            self._end_attempt(ticket, ending.why)
        return True

    async def _record_and_tell(self, ticket: Ticket, ending: Ending) -> None:
        """The final state recorded (fenced by its attempt), the skip counted and told to the session."""
        numbers = [ticket.attempt.number]
        if ticket.pending is not None:
            # Placement writes whose reply was lost may have started the next attempt (on a node that was
            # never told): that slot is freed, and the final state is recorded for whichever attempt is there.
            pending, ticket.pending = ticket.pending, None
            numbers.append(pending.number + 1)
            self._spawn(self._release(pending.node_id, ticket.spec.job_id, pending.number + 1))
        if ticket.recorded or len(numbers) > 1:
            try:
                for number in numbers:
                    await self._store.transition(
                        ticket.spec.job_id,
                        number,
                        (JobState.CREATED, *LIVE_STATES),
                        ending.state,
                        reason=ending.reason,
                    )
            except RedisError as exc:  # the client hears of it all the same; the record expires with its TTL
                log.warning("job end not recorded", extra=_ids(ticket, error=repr(exc)))
        if ending.skip is not None:
            self._metrics.skips.labels(ending.skip.value).inc()
            ticket.sink.job_skipped(ticket.spec.index, ending.skip, ending.why)

    def _leave_node(self, ticket: Ticket) -> Attempt:
        """The running attempt is over here: no longer live, no deadline. Returns it."""
        if self._live.get(ticket.spec.job_id) is ticket:
            del self._live[ticket.spec.job_id]
            if not self._live:
                self._idle.set()
        if ticket.deadline is not None:
            ticket.deadline.cancel()
            ticket.deadline = None
        if ticket.phase is Phase.RUNNING:
            ticket.phase = Phase.BETWEEN
        return ticket.attempt

    def _end_attempt(self, ticket: Ticket, cancel_reason: str) -> Attempt:
        """The running attempt ends unfinished: it leaves its node, which is told to stop it, and its slot
        is freed."""
        attempt = self._leave_node(ticket)
        if attempt.node_id is not None:
            self._transport.cancel(attempt.node_id, ticket.spec.job_id, attempt.number, cancel_reason)
            self._spawn(self._release(attempt.node_id, ticket.spec.job_id, attempt.number))
        return attempt

    async def _record_accepted(self, ticket: Ticket, attempt: int) -> None:
        try:
            await self._store.transition(ticket.spec.job_id, attempt, (JobState.ASSIGNED,), JobState.ACCEPTED)
        except RedisError as exc:
            log.warning("job acceptance not recorded", extra=_ids(ticket, error=repr(exc)))

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

    def _stale(self, node_id: str, event: JobEvent, owned: bool, recorded: bool) -> None:
        """A message about an attempt that is not current here. When this instance watches the job (`owned`)
        the attempt is an old one: refused (fenced), its slot freed. Otherwise the job may be of a session
        whose stream ended here or moved: a result is recorded in Redis (fenced by its attempt there) for
        whoever resumes the session, a failure puts the job back to wait for it."""
        if recorded:
            return  # recorded elsewhere; no session here for it
        if not owned and isinstance(event, JobOutput):
            self._spawn(self._record_unwatched(node_id, event))
            return
        if not owned and isinstance(event, JobFailed | JobRejected):
            self._spawn(self._unplace(node_id, event.job_id, event.attempt))
            return
        if isinstance(event, JobOutput):
            self._metrics.results_fenced.inc()
            log.warning(
                "result of an old attempt refused",
                extra={"job_id": event.job_id, "attempt": event.attempt, "node_id": node_id},
            )
        if isinstance(event, JobOutput | JobFailed | JobRejected):
            self._spawn(self._release(node_id, event.job_id, event.attempt))

    async def _record_unwatched(self, node_id: str, output: JobOutput) -> None:
        try:
            await self.record_unwatched(node_id, output)
        except RedisError as exc:
            log.warning("result not recorded", extra={"job_id": output.job_id, "error": repr(exc)})
            self._spawn(self._release(node_id, output.job_id, output.attempt))

    async def record_unwatched(self, node_id: str, output: JobOutput, owner_hint: str = "") -> bool:
        """A result of an attempt no session here watched when it arrived: recorded (fenced) with its slot
        released, then handed to the instance that owns the session now (`owner_hint` when the session has
        no record): this instance's ticket if it watches the attempt by now, else that instance. True when
        recorded. RedisError when it could not be."""
        completed, released = await self._store.complete_and_release(output, node_id)
        if released:
            self.slot_freed(node_id)
        if not completed.applied:
            self._metrics.results_fenced.inc()
            log.warning(
                "result of an old attempt refused",
                extra={"job_id": output.job_id, "attempt": output.attempt, "node_id": node_id},
            )
            return False
        self._metrics.results_unwatched.inc()
        owner = completed.owner or owner_hint
        if owner == self._store.instance_id:
            if self.watches(output.job_id, output.attempt, node_id):  # the session resumed here meanwhile
                ticket = self._live[output.job_id]
                self._leave_node(ticket)
                self._deliver(ticket, node_id, output, self._clock.monotonic(), recorded=True)
        elif owner:
            self._transport.forward(owner, node_id, output)
        return True

    async def _unplace(self, node_id: str, job_id: str, attempt: int) -> None:
        """An attempt no session here watches failed or was lost: the job waits, CREATED, for whoever resumes
        its session (fenced by the attempt), and the slot is freed."""
        try:
            await self._store.transition(job_id, attempt, LIVE_STATES, JobState.CREATED, node_id="")
        except RedisError as exc:
            log.warning("job not put back", extra={"job_id": job_id, "error": repr(exc)})
        await self._release(node_id, job_id, attempt)

    # The queues' pump.

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
        for pair in self._queues.pairs():
            while (ticket := self._queues.head(pair)) is not None:
                if ticket.ended:
                    self._queues.remove(ticket)
                elif ticket.store_wait_until and now >= ticket.store_wait_until:
                    why = f"the scheduler's store (Redis) did not answer within {self._settings.store_wait_ms} ms"
                    await self._finish(ticket, _store_unavailable(why))
                elif not ticket.store_wait_until and now >= ticket.queued_until:
                    await self._queue_timeout(ticket, pair)
                else:
                    serving = (n.node_id for n in self._cache.current.nodes_for(pair))
                    freed = self._queues.take_freed(serving, ticket.avoided(self._cache.current.stamp))
                    try:
                        placed = await self._try_place(
                            ticket, freed is not None or not ticket.recorded, freed
                        )
                        if not placed and not ticket.recorded:
                            await self._record_waiting(ticket)
                    except RedisError as exc:
                        if await self._wait_for_store(ticket, exc):
                            raise  # Redis is down: the pump tries again at its next turn
                        continue  # ended (out of memory, or no room to wait)
                    if not placed:
                        break
                    # The placement awaited Redis: the queue may have changed meanwhile (a session that
                    # closed took its tickets out), so take out this ticket, wherever it is now.
                    self._queues.remove(ticket)
        self._metrics.jobs_queued.set(self.queued)
        self._queues.forget_freed()

    async def _queue_timeout(self, ticket: Ticket, pair: LanguagePair) -> None:
        if self._cache.current.serves(pair):
            why = f"no free slot for {pair} within {ticket.queue_timeout_s * 1000:.0f} ms"
            await self._finish(ticket, Ending(JobState.SKIPPED, "queue_timeout", why, SkipReason.NO_CAPACITY))
        else:
            why = f"no registered node serves {pair}"
            await self._finish(ticket, Ending(JobState.SKIPPED, "no_node", why, SkipReason.NO_NODE))

    def _spawn(self, coro: Coroutine[object, object, object]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[object]) -> None:
        self._tasks.discard(task)
        if task.cancelled() or (exc := task.exception()) is None:
            return
        if isinstance(exc, RedisError | OSError):
            # Redis went away under a background step (a node loss's new placement, a final state): what
            # it left is settled by fencing and recovery; a traceback would only say Redis was away.
            self._metrics.redis_errors.labels("dispatch").inc()
            log.warning("dispatch step not done: Redis did not answer", extra={"error": repr(exc)})
        else:
            log.error("dispatch task failed", exc_info=exc)


AT_CAPACITY = "REJECT_REASON_AT_CAPACITY"  # a node's rejection: every slot busy

_SESSION_ENDED = Ending(JobState.SKIPPED, "session_ended", "session ended", None)

_SKIP_BY_REASON = {
    "queue_timeout": SkipReason.NO_CAPACITY,
    "queue_full": SkipReason.NO_CAPACITY,
    "no_node": SkipReason.NO_NODE,
    "shutdown": SkipReason.SHUTDOWN,
    "store_unavailable": SkipReason.STORE_UNAVAILABLE,
    "storage_full": SkipReason.STORAGE_FULL,
}


def skip_reason_for(state: JobState, reason: str) -> SkipReason:
    """The skip a client is told for a job recorded FAILED or SKIPPED with `reason`."""
    if state is JobState.FAILED:
        return SkipReason.FAILED
    return _SKIP_BY_REASON.get(reason, SkipReason.FAILED)


def _failed(why: str) -> Ending:
    return Ending(JobState.FAILED, "failed", why, SkipReason.FAILED)


def _store_unavailable(why: str) -> Ending:
    return Ending(JobState.SKIPPED, "store_unavailable", why, SkipReason.STORE_UNAVAILABLE)


def _ids(ticket: Ticket, **extra: object) -> dict[str, object]:
    a = ticket.attempt
    return {"job_id": ticket.spec.job_id, "attempt": a.number, "node_id": a.node_id, **extra}
