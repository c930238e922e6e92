"""NodeHub: the node streams this scheduler instance holds, and their life cycle in the registry."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from redis.exceptions import RedisError

from lingua_grpc.clock import Clock
from lingua_grpc.errors import FailedPrecondition, LeaseExpired, NotFound, PermissionDenied
from lingua_grpc.jobs import Assignment, JobEvent, ResultLimits
from lingua_grpc.metrics import SchedulerMetrics
from lingua_grpc.nodes._link import (
    CloseReason,
    DrainCommand,
    NodeLink,
    Outgoing,
    ReregisterCommand,
)
from lingua_grpc.nodes._links import NodeLinks
from lingua_grpc.registry import (
    DrainOutcome,
    HeartbeatOutcome,
    NodeLoad,
    NodeRecord,
    NodeRegistry,
    NodeState,
    Registration,
    RegistrationLimits,
    RegistrySnapshot,
    SnapshotCache,
)
from lingua_grpc.tasks import cancel_and_wait, raise_if_cancelling

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class HubSettings:
    instance_id: str
    heartbeat_interval_ms: int
    lease_ms: int
    lease_check_interval_ms: int
    registration_limits: RegistrationLimits
    result_limits: ResultLimits
    reconnect_grace_ms: int = 0  # a broken stream's attempts wait this long for the node to come back


class JobListener(Protocol):
    """Receives what nodes say about jobs, and node losses (the dispatcher)."""

    async def on_event(self, node_id: str, event: JobEvent) -> None: ...

    def node_lost(self, node_id: str, connection_id: str | None = None) -> None: ...

    async def adopt(
        self, node_id: str, connection_id: str, running: Iterable[tuple[str, int]]
    ) -> set[tuple[str, int]]: ...

    def assignment_written(self, job_id: str, attempt: int) -> None: ...

    def not_running(self, node_id: str, attempts: Iterable[str]) -> None:
        """The node registered without these attempts ('job_id#attempt'): it does not run them (their slots
        were freed). Those nobody here watches go back to wait for their session."""
        ...


@dataclass(frozen=True, slots=True)
class Attached:
    link: NodeLink
    registry_version: int


def lapsed(links: Iterable[NodeLink], now: float, lease_s: float) -> list[NodeLink]:
    """Links not heard from for more than a lease, and not held up by this instance applying one of their
    messages (a Redis outage must not read as the node's death). Pure."""
    return [
        link
        for link in links
        if not link.closed and not link.handling and now - link.last_heartbeat > lease_s
    ]


class NodeHub:
    def __init__(
        self,
        registry: NodeRegistry,
        cache: SnapshotCache,
        links: NodeLinks,
        jobs: JobListener,
        settings: HubSettings,
        metrics: SchedulerMetrics,
        clock: Clock,
    ) -> None:
        """`links` is the table of this instance's node streams, which the dispatcher (`jobs`) sends through."""
        self._registry = registry
        self._cache = cache
        self._links = links
        self._jobs = jobs
        self._settings = settings
        self._metrics = metrics
        self._clock = clock
        self._tasks: set[asyncio.Task[None]] = set()
        self._watchdog: asyncio.Task[None] | None = None
        # Broken streams whose attempts wait for their node to register again (connection id -> timer).
        self._graces: dict[str, tuple[str, asyncio.TimerHandle]] = {}
        cache.add_listener(self._on_snapshot)

    def written(self, message: Outgoing) -> None:
        """The node stream's writer is handing this message to gRPC (for the dispatch overhead timings)."""
        if isinstance(message, Assignment):
            self._jobs.assignment_written(message.spec.job_id, message.attempt)

    async def job_event(self, link: NodeLink, event: JobEvent) -> None:
        link.last_heartbeat = self._clock.monotonic()  # a node that speaks is alive, heartbeat or not
        link.handling += 1
        try:
            await self._job_event(link, event)
        finally:
            link.handling -= 1
            link.last_heartbeat = self._clock.monotonic()

    async def _job_event(self, link: NodeLink, event: JobEvent) -> None:
        refused = self._settings.result_limits.refusal(event)
        if refused is not None:
            log.warning(
                "node result over the limits: the attempt fails",
                extra={"node_id": link.node_id, "job_id": event.job_id, "why": refused.message},
            )
            event = refused
        try:
            await self._jobs.on_event(link.node_id, event)
        except RedisError as exc:
            # Redis is the problem, not the node: keep its stream. The attempt's deadline re-dispatches it.
            self._metrics.redis_errors.labels("job_event").inc()
            log.warning(
                "job message not applied",
                extra={
                    "node_id": link.node_id,
                    "job_id": event.job_id,
                    "attempt": event.attempt,
                    "error": repr(exc),
                },
            )

    async def start(self) -> None:
        self._watchdog = asyncio.create_task(self._watch_leases(), name="lease-watchdog")

    def close_all(self) -> None:
        """Ends every node stream with UNAVAILABLE, so the nodes reconnect (elsewhere, if this instance stops)."""
        for link in self._links:
            link.close(CloseReason.SHUTDOWN)

    async def stop(self) -> None:
        """Stops the lease watchdog and waits for pending deregistrations. Call after the server stopped."""
        watchdog, self._watchdog = self._watchdog, None
        await cancel_and_wait(watchdog)
        for connection_id, (node_id, timer) in list(self._graces.items()):  # stopping: no more waiting
            timer.cancel()
            self._grace_over(node_id, connection_id)
        self.close_all()
        # Node handlers may run their `finally` (detach) after the server stopped: wait until every link
        # has left and every deregistration finished, within a bound.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 2.0
        while (self._tasks or self._links) and loop.time() < deadline:
            if self._tasks:
                await asyncio.gather(*list(self._tasks), return_exceptions=True)
            else:
                await asyncio.sleep(0.01)  # a handler still has to run its finally

    async def attach(self, registration: Registration, holder: str) -> Attached:
        """Registers a node stream for `holder` (the credential's name). A node id whose live registration
        belongs to another credential is refused; the same credential's newer stream takes over."""
        registration.validate(self._settings.registration_limits)
        link = NodeLink(
            registration.node_id, uuid.uuid4().hex, registration.capabilities, self._clock.monotonic()
        )
        result = await self._registry.register(
            registration, self._settings.instance_id, link.connection_id, self._settings.lease_ms, holder
        )
        if result.held_by_another:
            self._metrics.auth_refusals.labels("node", "node_id_held").inc()
            log.warning(
                "node id held by another credential", extra={"node_id": link.node_id, "credential": holder}
            )
            raise PermissionDenied(
                f"node id {link.node_id!r} is held by a live registration of another credential"
            )
        previous = self._links.put(link)
        # Before the older stream closes: the attempts the node says it holds move to the new stream and keep
        # running; only the others are run elsewhere when the older stream ends. A listed attempt that is no
        # longer current here is cancelled on the node (its work would be refused) and its slot freed.
        adopted = await self._jobs.adopt(link.node_id, link.connection_id, registration.running)
        self._jobs.not_running(link.node_id, result.freed)
        if previous is not None:
            previous.close(
                CloseReason.SUPERSEDED, FailedPrecondition("the node registered on a newer stream")
            )
        self._metrics.node_registrations.inc()
        self._metrics.slots_reconciled.inc(result.slots_freed)
        self._metrics.nodes_connected.set(len(self._links))
        log.info(
            "node registered",
            extra={
                "node_id": link.node_id,
                "connection_id": link.connection_id,
                "pairs": sorted(str(p) for p in registration.capabilities.pairs_served()),
                "max_concurrency": registration.capabilities.max_concurrency,
                "registry_version": result.version,
                "running_jobs": len(registration.running),
                "adopted_jobs": len(adopted),
                "slots_freed": result.slots_freed,
            },
        )
        if result.changed or result.slots_freed:
            await self._refresh_quietly()
        return Attached(link, result.version)

    async def heartbeat(self, link: NodeLink, load: NodeLoad) -> None:
        """The node is alive: its stream's lease runs again at once, and its load and Redis lease are
        recorded in the background (the stream's reader does not wait for Redis; one write in flight per
        node, a heartbeat that comes meanwhile only renews the stream's lease)."""
        link.last_heartbeat = self._clock.monotonic()
        if link.heartbeat_recording:
            return
        link.heartbeat_recording = True
        task = asyncio.create_task(self._record_heartbeat(link, load), name=f"heartbeat-{link.node_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _record_heartbeat(self, link: NodeLink, load: NodeLoad) -> None:
        try:
            await self._write_heartbeat(link, load)
        finally:
            link.heartbeat_recording = False

    async def _write_heartbeat(self, link: NodeLink, load: NodeLoad) -> None:
        try:
            outcome = await self._registry.heartbeat(
                link.node_id, link.connection_id, load, self._settings.lease_ms
            )
        except RedisError as exc:
            # The node is alive; Redis is the problem. Keep the stream and try again at the next heartbeat.
            self._metrics.redis_errors.labels("heartbeat").inc()
            log.warning("heartbeat not recorded", extra={"node_id": link.node_id, "error": repr(exc)})
            return
        if outcome is HeartbeatOutcome.SUPERSEDED:
            link.close(CloseReason.SUPERSEDED, FailedPrecondition("the node registered on a newer stream"))
        elif outcome is HeartbeatOutcome.UNKNOWN:
            log.warning(
                "heartbeat from a node the registry lost; asking it to register again",
                extra={"node_id": link.node_id},
            )
            link.send(ReregisterCommand("the registry no longer holds this node"))
            link.close(CloseReason.REREGISTER)

    async def node_draining(self, link: NodeLink, reason: str) -> None:
        link.drain_sent = True  # the node asked itself: no need to tell it
        outcome, version = await self._registry.drain(link.node_id)
        log.info(
            "node draining", extra={"node_id": link.node_id, "reason": reason, "registry_version": version}
        )
        if outcome is DrainOutcome.DRAINING:
            await self._refresh_quietly()

    async def drain_node(self, node_id: str, reason: str) -> tuple[NodeRecord, int]:
        """Operator request: the node takes no new jobs, finishes running ones, then leaves."""
        outcome, version = await self._registry.drain(node_id)
        if outcome is DrainOutcome.UNKNOWN:
            raise NotFound(f"node {node_id!r} is not registered")
        link = self._links.get(node_id)
        if link is not None and not link.drain_sent:
            link.drain_sent = link.send(DrainCommand(reason or "drained by operator"))
        snapshot = await self._cache.refresh()
        record = snapshot.nodes.get(node_id)
        if record is None:
            raise NotFound(f"node {node_id!r} left while being drained")
        log.info(
            "node drain requested", extra={"node_id": node_id, "reason": reason, "registry_version": version}
        )
        return record, snapshot.version

    def detach(self, link: NodeLink) -> None:
        """The stream ended: removes the node from the registry unless a newer stream took it over."""
        if link.close_reason is None:
            link.close(CloseReason.STREAM_BROKEN)
        self._links.remove(link)
        self._metrics.nodes_connected.set(len(self._links))
        reason = link.close_reason
        grace_s = self._settings.reconnect_grace_ms / 1000
        if reason in (CloseReason.STREAM_BROKEN, CloseReason.LEFT) and grace_s > 0:
            # A network blip (a cut connection may read as the stream's end): the node comes back at once,
            # listing the attempts it runs, which move to its new stream and run on (`adopt`); only those of
            # a node that does not come back run elsewhere.
            connection = link.connection_id
            timer = asyncio.get_running_loop().call_later(grace_s, self._grace_over, link.node_id, connection)
            self._graces[connection] = (link.node_id, timer)
        else:
            self._jobs.node_lost(link.node_id, link.connection_id)
        if reason in (CloseReason.SUPERSEDED, CloseReason.REREGISTER):
            return
        task = asyncio.create_task(self._deregister(link, reason), name=f"deregister-{link.node_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _grace_over(self, node_id: str, connection_id: str) -> None:
        self._graces.pop(connection_id, None)
        self._jobs.node_lost(node_id, connection_id)

    async def _deregister(self, link: NodeLink, reason: CloseReason | None) -> None:
        label = reason.value if reason else "unknown"
        try:
            removed = await self._registry.deregister(link.node_id, link.connection_id)
        except RedisError as exc:
            # The lease will lapse on its own and any instance's watchdog removes the node then.
            self._metrics.redis_errors.labels("deregister").inc()
            log.warning(
                "node not deregistered; its lease will lapse",
                extra={"node_id": link.node_id, "error": repr(exc)},
            )
            return
        if removed:
            self._metrics.node_departures.labels(label).inc()
            log.info("node removed", extra={"node_id": link.node_id, "reason": label})
            await self._refresh_quietly()

    def _on_snapshot(self, snapshot: RegistrySnapshot) -> None:
        # A drain requested through another instance reaches the node through the instance holding it.
        for link in self._links:
            record = snapshot.nodes.get(link.node_id)
            if record is not None and record.state is NodeState.DRAINING and not link.drain_sent:
                link.drain_sent = link.send(DrainCommand("drained by operator"))

    async def _watch_leases(self) -> None:
        lease_s = self._settings.lease_ms / 1000
        while True:
            raise_if_cancelling()
            await asyncio.sleep(self._settings.lease_check_interval_ms / 1000)
            for link in lapsed(self._links, self._clock.monotonic(), lease_s):
                log.warning(
                    "node lease expired", extra={"node_id": link.node_id, "lease_ms": self._settings.lease_ms}
                )
                link.close(
                    CloseReason.LEASE_EXPIRED,
                    LeaseExpired(f"no heartbeat for {self._settings.lease_ms} ms: the node was dropped"),
                )
            try:
                removed = await self._registry.expire_lapsed()
            except RedisError as exc:
                raise_if_cancelling()
                self._metrics.redis_errors.labels("expire").inc()
                log.warning("lease check failed", extra={"error": repr(exc)})
                continue
            except Exception:  # a bug, or the Redis client's (a torn connection): leases must be watched on
                raise_if_cancelling()
                log.exception("lease check failed; going on")
                continue
            for node_id in removed:
                self._jobs.node_lost(node_id)
                self._metrics.node_departures.labels(CloseReason.LEASE_EXPIRED.value).inc()
                log.warning("node removed after its lease lapsed", extra={"node_id": node_id})
            if removed:
                await self._refresh_quietly()

    async def _refresh_quietly(self) -> None:
        try:
            await self._cache.refresh()
        except RedisError as exc:
            log.warning("snapshot refresh failed", extra={"error": repr(exc)})
