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
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass

from redis.exceptions import RedisError

from lingua_grpc.clock import Clock
from lingua_grpc.dispatch import Dispatcher
from lingua_grpc.fleet._inbox import Courier
from lingua_grpc.fleet._messages import Assign, Cancel, Lost, Message, Relayed
from lingua_grpc.jobs import (
    LIVE_STATES,
    Assignment,
    JobAccepted,
    JobEvent,
    JobFailed,
    JobOutput,
    JobRejected,
    JobStore,
    parse_job_id,
    result_fields,
)
from lingua_grpc.metrics import SchedulerMetrics
from lingua_grpc.nodes import NodeLinks
from lingua_grpc.registry import SnapshotCache
from lingua_grpc.store import HandOff

log = logging.getLogger(__name__)

VIA = "via:"  # connection id of an attempt handed to another instance: via:<instance id>

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
    ) -> None:
        self._id = instance_id
        self._dispatcher = dispatcher
        self._links = links
        self._courier = courier
        self._store = store
        self._metrics = metrics
        self._clock = clock
        self._routes: dict[Key, Route] = {}
        self._tasks: set[asyncio.Task[object]] = set()

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
        await self._relay(route, node_id, event)

    async def _relay(self, route: Route, node_id: str, event: JobEvent) -> None:
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
            if owner and owner != self._id:
                route = self._routes[(job_id, attempt)] = Route(owner, node_id, connection_id)
                kept.add((job_id, attempt))
                # The node runs it: its owner hears it accepted (the node's own word may have been lost
                # with the instance that held it), so the job deadline, not the accept timeout, applies.
                self._spawn(self._relay(route, node_id, JobAccepted(job_id, attempt)))
            else:
                self._cancel_on_node(node_id, job_id, attempt)
        self._metrics.relayed_attempts.set(len(self._routes))
        return kept

    def forget(self, job_id: str, attempt: int) -> None:
        """This instance no longer relays the attempt (it was ended for its dead owner)."""
        self._forget((job_id, attempt))

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
            await self._dispatcher.on_event(message.node_id, message.event)
        else:
            self._dispatcher.attempt_lost(message.job_id, message.attempt, message.why, message.node_gone)

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
        """What the node says about an attempt whose owner is gone: a result is recorded (fenced) for the
        session's next owner; a failure frees the slot (the survivor that takes over ends the job). True
        when a result was recorded."""
        if isinstance(event, JobOutput):
            applied, _ = await self._store.complete_and_release(
                event.job_id, event.attempt, node_id, LIVE_STATES, **result_fields(event)
            )
            if applied:
                self._metrics.recovered.labels("results_recorded").inc()
                log.info(
                    "result of a dead instance's job recorded",
                    extra={"job_id": event.job_id, "attempt": event.attempt, "node_id": node_id},
                )
            return applied
        if isinstance(event, JobFailed | JobRejected):
            self._dispatcher.free_slot(node_id, event.job_id, event.attempt)
        return False

    def _tell_lost(self, route: Route, key: Key, why: str, node_gone: bool) -> None:
        job_id, attempt = key
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
