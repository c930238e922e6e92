"""Readiness: the health each service reports, from the reasons in force, and what says why.

gRPC health has one status per service and no reason, so the reasons live beside it: a log line on each
change and the gauge `lingua_not_serving{reason}`. A reason applies to the services it names; the whole
server ("") is NOT_SERVING while any reason is in force. Node agents keep working while SessionService is
overloaded or the store is full: a load balancer routing nodes should check `lingua.v1.NodeService`.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Collection, Mapping

from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health_pb2
from prometheus_client import Gauge

log = logging.getLogger(__name__)

SERVING: int = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING: int = health_pb2.HealthCheckResponse.NOT_SERVING


class NotServing(enum.Enum):
    REDIS_UNREACHABLE = "redis_unreachable"  # every service: nothing can be recorded or read
    STORAGE_FULL = "storage_full"  # SessionService: Redis refuses writes for memory (utterances skipped)
    REDIS_NEAR_FULL = (
        "redis_near_full"  # SessionService: Redis' memory near its maxmemory (new clients elsewhere)
    )
    OVERLOADED = "overloaded"  # SessionService: event-loop lag over its limit (new sessions refused)


class Readiness:
    def __init__(
        self,
        servicer: health_aio.HealthServicer,
        affects: Mapping[NotServing, Collection[str]],
        gauge: Gauge,
    ) -> None:
        self._servicer = servicer
        self._affects = affects
        self._services = ("", *sorted({s for names in affects.values() for s in names}))
        self._gauge = gauge
        self._in_force: set[NotServing] = set()
        self._applied: dict[str, int] = {}
        self._pushing = asyncio.Lock()
        self._pushes: set[asyncio.Task[None]] = set()
        for reason in NotServing:
            gauge.labels(reason.value).set(0)

    @property
    def reasons(self) -> frozenset[NotServing]:
        return frozenset(self._in_force)

    def status(self, service: str) -> int:
        if service == "":
            return NOT_SERVING if self._in_force else SERVING
        hit = any(service in self._affects[r] for r in self._in_force)
        return NOT_SERVING if hit else SERVING

    async def start(self) -> None:
        await self._push()

    def set(self, reason: NotServing, in_force: bool, why: str) -> None:
        """Puts `reason` in force (or lifts it); `why` goes to the log, for the on-call engineer."""
        if (reason in self._in_force) == in_force:
            return
        if in_force:
            self._in_force.add(reason)
            log.warning("not serving: %s", why, extra={"reason": reason.value})
        else:
            self._in_force.discard(reason)
            log.info("serving again: %s", why, extra={"reason": reason.value})
        self._gauge.labels(reason.value).set(1 if in_force else 0)
        task = asyncio.get_running_loop().create_task(self._push(), name="health-push")
        self._pushes.add(task)
        task.add_done_callback(self._pushes.discard)

    async def _push(self) -> None:
        async with self._pushing:  # in order: a later state never lands before an earlier one
            for service in self._services:
                status = self.status(service)
                if self._applied.get(service) != status:
                    await self._servicer.set(service, status)
                    self._applied[service] = status
