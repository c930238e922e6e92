"""Cross-instance dispatch: a job is owned by the instance of its session; its attempt may run on a node whose
stream another instance holds. The owner reserves the slot and starts the attempt (Lua, as for its own
nodes), then hands it to the holder (`FleetTransport`); the holder writes it to the node's stream and relays
what the node says about it back (`Relay`). Both ends apply a message only for the attempt it names, so a
late or repeated one changes nothing. When the owner is gone (its lease lapsed), the holder settles the
attempt itself: a result is recorded in Redis for the session's next owner, a failure frees the slot.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass

from redis.exceptions import RedisError

from lingua_grpc.clock import Clock
from lingua_grpc.dispatch import VIA, Dispatcher
from lingua_grpc.fleet._inbox import Courier
from lingua_grpc.fleet._messages import Assign, Cancel, Lost, Message, Moved, Relayed, Reroute
from lingua_grpc.jobs import (
    Assignment,
    JobAccepted,
    JobEvent,
    JobFailed,
    JobOutput,
    JobRejected,
    JobState,
    JobStore,
    parse_job_id,
)
from lingua_grpc.metrics import SchedulerMetrics
from lingua_grpc.nodes import NodeLinks
from lingua_grpc.registry import SnapshotCache
from lingua_grpc.store import HandOff

log = logging.getLogger(__name__)


Key = tuple[str, int]  # (job id, attempt)


@dataclass(frozen=True, slots=True)
class Route:
    """An attempt this instance runs on one of its node streams for another instance's session."""

    owner: str
    node_id: str
    connection_id: str


def _drop_result(future: asyncio.Future[HandOff]) -> None:
    if not future.cancelled():
        future.exception()  # retrieved: a failed fire-and-forget hand-off is counted, not raised


class FleetTransport:
    """The dispatcher's JobTransport: a node's stream on this instance, else a hand-off to the instance the
    snapshot says holds it."""

    def __init__(
        self, instance_id: str, links: NodeLinks, cache: SnapshotCache, courier: Courier, clock: Clock
    ) -> None:
        self._id = instance_id
        self._links = links
        self._cache = cache
        self._courier = courier
        self._clock = clock

    def _holder(self, node_id: str) -> str | None:
        record = self._cache.current.nodes.get(node_id)
        if record is None or not record.instance_id or record.instance_id == self._id:
            return None
        return record.instance_id

    async def deliver(self, node_id: str, assignment: Assignment) -> str | None:
        connection_id = self._links.deliver(node_id, assignment)
        if connection_id is not None:
            return connection_id
        holder = self._holder(node_id)
        if holder is None:
            return None
        try:
            outcome = await self._courier.send(
                holder, Assign(self._id, node_id, assignment, self._clock.now_ms())
            )
        except RedisError as exc:
            log.warning(
                "attempt not handed off",
                extra={"job_id": assignment.spec.job_id, "node_id": node_id, "error": repr(exc)},
            )
            return None
        if not outcome.delivered:
            log.warning(
                "attempt not handed off: the instance holding the node is %s",
                "at its inbox bound" if outcome.full else "gone",
                extra={"job_id": assignment.spec.job_id, "node_id": node_id, "instance_id": holder},
            )
            return None
        return VIA + holder

    def cancel(self, node_id: str, job_id: str, attempt: int, reason: str) -> None:
        if self._links.get(node_id) is not None:
            self._links.cancel(node_id, job_id, attempt, reason)
            return
        holder = self._holder(node_id)
        if holder is not None:
            message = Cancel(node_id, job_id, attempt, reason, self._clock.now_ms())
            self._courier.send(holder, message).add_done_callback(_drop_result)

    def forward(self, owner: str, node_id: str, output: JobOutput) -> None:
        message = Relayed(self._id, node_id, output, self._clock.now_ms(), recorded=True)
        self._courier.send(owner, message).add_done_callback(_drop_result)

    def holder(self, node_id: str) -> str | None:
        """The instance holding the node's stream, as the snapshot says (None: this one, or no one)."""
        return self._holder(node_id)


class Relay:
    """What node streams say goes to the job's owner: this instance's dispatcher, or another instance. It is
    the hub's JobListener, and it applies what other instances hand this one (`apply`)."""

    def __init__(
        self,
        instance_id: str,
        dispatcher: Dispatcher,
        links: NodeLinks,
        courier: Courier,
        store: JobStore,
        metrics: SchedulerMetrics,
        clock: Clock,
        holder: Callable[[str], str | None],
        orphan_deadline_ms: int,
    ) -> None:
        """`holder`: the instance holding a node's stream when not this one (`FleetTransport.holder`).
        `orphan_deadline_ms`: how long an attempt no session watches may run (the job deadline)."""
        self._id = instance_id
        self._orphan_deadline_s = orphan_deadline_ms / 1000
        self._holder = holder
        self._dispatcher = dispatcher
        self._links = links
        self._courier = courier
        self._store = store
        self._metrics = metrics
        self._clock = clock
        self._routes: dict[Key, Route] = {}
        self._tasks: set[asyncio.Task[object]] = set()
        dispatcher.on_detached = self._keep
        # Called with (session id, epoch, new owner) when another instance resumed one of this one's sessions.
        self.on_moved: Callable[[str, int, str], None] | None = None
        # Whether a session has a stream on this instance (its jobs are watched here).
        self.session_here: Callable[[str], bool] = lambda session_id: False

    @property
    def relayed(self) -> int:
        return len(self._routes)

    async def stop(self) -> None:
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=2)

    # The hub's JobListener.

    async def on_event(self, node_id: str, event: JobEvent) -> None:
        key = (event.job_id, event.attempt)
        route = self._routes.get(key)
        if route is None or route.node_id != node_id:
            await self._dispatcher.on_event(node_id, event)
            return
        if isinstance(event, JobOutput | JobFailed | JobRejected):
            self._forget(key)
        if isinstance(event, JobOutput):
            await self._record_and_relay(route, node_id, event)
            return
        await self._relay(route, node_id, event)

    async def _record_and_relay(self, route: Route, node_id: str, output: JobOutput) -> None:
        """A result is recorded where it arrives, then handed to the instance that owns its session now (the
        store says which: the session may have moved since the attempt was handed here), which delivers
        it. A result in the store survives its owner's death; one in a dead owner's inbox would wait."""
        try:
            await self._dispatcher.record_unwatched(node_id, output, owner_hint=route.owner)
        except RedisError as exc:  # the owner records it (or, gone, whoever settles it)
            log.warning(
                "relayed result not recorded here", extra={"job_id": output.job_id, "error": repr(exc)}
            )
            await self._relay(route, node_id, output)

    async def _relay(self, route: Route, node_id: str, event: JobEvent) -> None:
        if not route.owner:  # its session's stream ended: nobody to tell (a result is recorded, above)
            await self.settle_orphan(node_id, event)
            return
        outcome = await self._courier.send(
            route.owner, Relayed(self._id, node_id, event, self._clock.now_ms())
        )
        if not outcome.delivered:
            if outcome.full:
                log.warning(
                    "node message not relayed: the owner's inbox is full (its deadline runs the job again)",
                    extra={"job_id": event.job_id, "attempt": event.attempt, "instance_id": route.owner},
                )
            await self.settle_orphan(node_id, event)
            key = (event.job_id, event.attempt)
            if not outcome.full and self._routes.get(key) is route:  # its owner is gone: nobody's now
                self._keep(event.job_id, event.attempt, route.node_id, route.connection_id, "")

    def node_lost(self, node_id: str, connection_id: str | None = None) -> None:
        self._dispatcher.node_lost(node_id, connection_id)
        for key, route in list(self._routes.items()):
            if route.node_id == node_id and (connection_id is None or route.connection_id == connection_id):
                self._forget(key)
                self._tell_lost(route, key, f"node {node_id} lost on instance {self._id}", node_gone=True)

    async def adopt(
        self, node_id: str, connection_id: str, running: Iterable[tuple[str, int]]
    ) -> set[tuple[str, int]]:
        """The node registered here holding `running`: attempts of this instance's jobs move to the new
        stream, those of other live instances' jobs are relayed to their owners from now on; any other
        (final, moved on, unknown) is cancelled on the node and its slot freed. Returns those kept."""
        held = set(running)
        kept = self._dispatcher.adopt(node_id, connection_id, held)
        foreign: list[tuple[str, int, str]] = []
        for job_id, attempt in held - kept:
            try:
                parse_job_id(job_id)
            except ValueError:
                self._cancel_on_node(node_id, job_id, attempt)
                continue
            foreign.append((job_id, attempt, node_id))
        owners = await self._store.owners(foreign)
        for job_id, attempt, _ in foreign:
            owner = owners.get((job_id, attempt))
            if owner is None or (owner == self._id and self.session_here(parse_job_id(job_id)[0])):
                # Final or moved on, or of a session here whose dispatcher places it again.
                self._cancel_on_node(node_id, job_id, attempt)
            elif owner == self._id:
                # Its session is this instance's but no stream of it watches the job (the client went): it
                # runs on, its result recorded for the resume.
                self._keep(job_id, attempt, node_id, connection_id, "")
                kept.add((job_id, attempt))
            else:
                route = self._routes[(job_id, attempt)] = Route(owner, node_id, connection_id)
                kept.add((job_id, attempt))
                # The node runs it: its owner hears it accepted (the node's own word may have been lost
                # with the instance that held it), so the job deadline, not the accept timeout, applies.
                self._spawn(self._relay(route, node_id, JobAccepted(job_id, attempt)))
        self._metrics.relayed_attempts.set(len(self._routes))
        return kept

    def not_running(self, node_id: str, attempts: Iterable[str]) -> None:
        for member in attempts:
            job_id, _, attempt = member.rpartition("#")
            if not attempt.isdigit() or self._dispatcher.watches(job_id, int(attempt), node_id):
                continue  # (this instance's own attempt: its old stream's end runs it again)
            self._forget((job_id, int(attempt)))
            self._dispatcher.unplace(node_id, job_id, int(attempt))

    def forget(self, job_id: str, attempt: int) -> None:
        """This instance no longer relays the attempt (it was ended for its dead owner)."""
        self._forget((job_id, attempt))

    def _keep(self, job_id: str, attempt: int, node_id: str, connection_id: str, owner: str) -> None:
        """An attempt on one of this instance's node streams that no session here watches any more: what
        its node says goes to `owner` ('' for nobody: a result is recorded for the session's resume). An
        attempt nobody watches gets the job deadline from now: a node that never answers must not hold the
        slot for good."""
        key = (job_id, attempt)
        route = self._routes[key] = Route(owner, node_id, connection_id)
        self._metrics.relayed_attempts.set(len(self._routes))
        if not owner:
            asyncio.get_running_loop().call_later(self._orphan_deadline_s, self._orphan_expired, key, route)

    def _orphan_expired(self, key: Key, route: Route) -> None:
        if self._routes.get(key) is not route:
            return  # answered, lost, or watched by a session again since
        self._forget(key)
        job_id, attempt = key
        why = "no answer within the job deadline, and no session watches it"
        self._links.cancel(route.node_id, job_id, attempt, why)
        self._dispatcher.unplace(route.node_id, job_id, attempt)

    def reroute(self, job_id: str, attempt: int, node_id: str) -> bool | None:
        """A session resumed here: its job's attempt on `node_id` is to be watched by this instance. Returns
        True when the node runs it on a stream here (its messages now go to this instance's dispatcher),
        False when no one runs it (the caller runs it again), None when the instance holding the node was
        asked (its answer comes as the attempt accepted, or lost)."""
        key = (job_id, attempt)
        if self._links.get(node_id) is not None:
            route = self._routes.get(key)
            if route is None or route.node_id != node_id:
                return False
            self._forget(key)
            return True
        holder = self._holder(node_id)
        if holder is None:
            return False
        message = Reroute(self._id, node_id, job_id, attempt, self._clock.now_ms())
        future = self._courier.send(holder, message)

        def done(f: asyncio.Future[HandOff]) -> None:
            if f.cancelled() or f.exception() is not None or not f.result().delivered:
                why = f"instance {holder}, holding node {node_id}, cannot be asked"
                self._dispatcher.attempt_lost(job_id, attempt, why, node_failed=False)

        future.add_done_callback(done)
        return None

    def orphan(self, job_id: str, attempt: int, node_id: str) -> None:
        """A dead owner's attempt that no session watches: the instance holding its node watches it alone
        from now on (its result recorded for a resume, the job deadline bounding its slot)."""
        key = (job_id, attempt)
        if self._links.get(node_id) is not None:
            route = self._routes.get(key)
            if route is not None and route.node_id == node_id:
                self._keep(job_id, attempt, node_id, route.connection_id, "")
            return
        holder = self._holder(node_id)
        if holder is not None:
            message = Reroute("", node_id, job_id, attempt, self._clock.now_ms())
            self._courier.send(holder, message).add_done_callback(_drop_result)

    def connection_of(self, node_id: str) -> str | None:
        """The connection an attempt on the node goes through from here: its stream, or its holder."""
        link = self._links.get(node_id)
        if link is not None:
            return link.connection_id
        holder = self._holder(node_id)
        return VIA + holder if holder is not None else None

    def moved(self, previous_owner: str, session_id: str, epoch: int) -> None:
        """Tells the instance that owned a session before that it was resumed here (it ends its stream)."""
        message = Moved(self._id, session_id, epoch, self._clock.now_ms())
        self._courier.send(previous_owner, message).add_done_callback(_drop_result)

    def assignment_written(self, job_id: str, attempt: int) -> None:
        if (job_id, attempt) not in self._routes:
            self._dispatcher.assignment_written(job_id, attempt)

    # What other instances hand this one.

    async def apply(self, message: Message) -> None:
        if isinstance(message, Assign):
            self._assign(message)
        elif isinstance(message, Cancel):
            self._forget((message.job_id, message.attempt))
            self._links.cancel(message.node_id, message.job_id, message.attempt, message.reason)
        elif isinstance(message, Relayed):
            await self._dispatcher.on_event(message.node_id, message.event, recorded=message.recorded)
        elif isinstance(message, Reroute):
            self._rerouted(message)
        elif isinstance(message, Moved):
            if self.on_moved is not None:
                self.on_moved(message.session_id, message.epoch, message.owner)
        else:
            self._dispatcher.attempt_lost(
                message.job_id, message.attempt, message.why, message.node_gone, message.node_id
            )

    def _rerouted(self, message: Reroute) -> None:
        """Another instance resumed the session of an attempt on one of this instance's node streams: what the
        node says goes there from now on; it hears at once whether the node has the attempt. With no owner
        (a dead owner's taker), the attempt becomes nobody's: it gets the job deadline here."""
        key = (message.job_id, message.attempt)
        route = self._routes.get(key)
        if route is None:
            taken = self._dispatcher.take_over(message.job_id, message.attempt)
            if taken is not None:
                route = Route(message.owner, *taken)
        link = self._links.get(message.node_id)
        if route is None or route.node_id != message.node_id or link is None:
            why = f"node {message.node_id} does not run it on instance {self._id}"
            self._tell_lost(Route(message.owner, message.node_id, ""), key, why, node_gone=False)
            return
        self._keep(message.job_id, message.attempt, route.node_id, route.connection_id, message.owner)
        if message.owner:  # (an orphan's reroute, from a dead owner's taker, needs no answer)
            route = self._routes[key]
            self._spawn(self._relay(route, message.node_id, JobAccepted(message.job_id, message.attempt)))

    def _assign(self, message: Assign) -> None:
        assignment = message.assignment
        key = (assignment.spec.job_id, assignment.attempt)
        link = self._links.get(message.node_id)
        if link is not None and link.send(assignment):
            self._routes[key] = Route(message.owner, message.node_id, link.connection_id)
            self._metrics.relayed_attempts.set(len(self._routes))
            return
        why = f"node {message.node_id} is not connected to instance {self._id}"
        self._tell_lost(Route(message.owner, message.node_id, ""), key, why, node_gone=False)

    # Attempts whose owner is gone.

    async def settle_orphan(self, node_id: str, event: JobEvent) -> bool:
        """What the node says about an attempt whose owner is gone (or whose session has no stream): a result
        is recorded (fenced) for the session's next owner, and handed to it if the session has moved to a
        live one; acceptance is recorded; a failure puts the job back to wait, CREATED, and frees the slot.
        True when a result was recorded."""
        if isinstance(event, JobOutput):
            recorded = await self._dispatcher.record_unwatched(node_id, event)
            if recorded:
                self._metrics.recovered.labels("results_recorded").inc()
            return recorded
        if isinstance(event, JobAccepted):
            await self._store.transition(event.job_id, event.attempt, (JobState.ASSIGNED,), JobState.ACCEPTED)
        if isinstance(event, JobFailed | JobRejected):
            self._dispatcher.unplace(node_id, event.job_id, event.attempt)
        return False

    def _tell_lost(self, route: Route, key: Key, why: str, node_gone: bool) -> None:
        job_id, attempt = key
        if not route.owner:  # its session's stream ended: the job waits, CREATED, for the resume
            self._dispatcher.unplace(route.node_id, job_id, attempt)
            return
        message = Lost(self._id, route.node_id, job_id, attempt, why, node_gone, self._clock.now_ms())
        future = self._courier.send(route.owner, message)

        def done(f: asyncio.Future[HandOff]) -> None:
            if f.cancelled() or f.exception() is not None:
                return
            if not f.result().delivered:  # the owner is gone: nobody will release this attempt's slot
                self._dispatcher.free_slot(route.node_id, job_id, attempt)

        future.add_done_callback(done)

    def _cancel_on_node(self, node_id: str, job_id: str, attempt: int) -> None:
        self._links.cancel(node_id, job_id, attempt, "this attempt is no longer assigned to the node")
        self._dispatcher.free_slot(node_id, job_id, attempt)

    def _forget(self, key: Key) -> None:
        if self._routes.pop(key, None) is not None:
            self._metrics.relayed_attempts.set(len(self._routes))

    def _spawn(self, coro: Coroutine[object, object, object]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[object]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("relay task failed", exc_info=task.exception())
