"""Scheduler instances in Redis: each one records itself with a lease, its address and what it holds, so
every instance (and an operator, through RegistryService.ListInstances) sees the whole fleet."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from redis.asyncio import Redis
from redis.exceptions import RedisError

from lingua_grpc.metrics import SchedulerMetrics
from lingua_grpc.store import InstanceKeys, RegistryKeys, ScriptBook, text
from lingua_grpc.tasks import cancel_and_wait, raise_if_cancelling

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Holdings:
    """What an instance holds: node streams, client sessions, jobs running on nodes."""

    nodes: int = 0
    sessions: int = 0
    jobs: int = 0


@dataclass(frozen=True, slots=True)
class InstanceRecord:
    instance_id: str
    address: str
    alive: bool
    lease_remaining_ms: int
    started_ms: int
    last_heartbeat_ms: int
    holdings: Holdings


class InstanceRegistry:
    def __init__(self, redis: Redis, keys: RegistryKeys, scripts: ScriptBook) -> None:
        self._redis = redis
        self._keys = keys
        self._scripts = scripts

    async def heartbeat(
        self,
        instance_id: str,
        address: str,
        lease_ms: int,
        record_ttl_ms: int,
        started_ms: int,
        holdings: Holdings,
    ) -> bool:
        """Records the instance and renews its lease; True when it was not recorded before. The record
        outlives its last renewal by `record_ttl_ms`, then expires."""
        return await self._scripts.run(
            self._scripts.heartbeat_instance(
                self._keys,
                instance_id,
                address=address,
                lease_ms=lease_ms,
                record_ttl_ms=record_ttl_ms,
                started_ms=started_ms,
                nodes=holdings.nodes,
                sessions=holdings.sessions,
                jobs=holdings.jobs,
            )
        )

    async def renew_inbox(self, instance_id: str, lease_ms: int, keep_ms: int, first: bool) -> bool:
        """Renews the instance's inbox lease (others hand it work while it holds); False when a survivor
        claimed the instance as dead. `first`: this process's first renewal."""
        keys = InstanceKeys(self._keys.prefix, instance_id)
        return await self._scripts.run(
            self._scripts.renew_inbox(keys, lease_ms=lease_ms, keep_ms=keep_ms, first=first)
        )

    async def deregister(self, instance_id: str) -> bool:
        """Removes the instance's record and its inbox lease (nothing more is handed to it)."""
        await self._redis.delete(InstanceKeys(self._keys.prefix, instance_id).lease)
        return await self._scripts.run(self._scripts.deregister_instance(self._keys, instance_id))

    async def list(self) -> list[InstanceRecord]:
        ids = sorted(text(m) for m in await self._redis.smembers(self._keys.instances))
        if not ids:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for instance_id in ids:
                pipe.hgetall(self._keys.instance(instance_id))
                pipe.pttl(self._keys.instance_lease(instance_id))
            replies = await pipe.execute()
        out, expired = [], []
        for i, instance_id in enumerate(ids):
            raw, pttl = replies[2 * i], int(replies[2 * i + 1])
            if not raw:
                expired.append(instance_id)  # its record expired (or it left between the two reads)
                continue
            f = {text(k): text(v) for k, v in raw.items()}
            out.append(
                InstanceRecord(
                    instance_id,
                    f.get("address", ""),
                    alive=pttl > 0,
                    lease_remaining_ms=max(0, pttl),
                    started_ms=int(f.get("started_ms", 0)),
                    last_heartbeat_ms=int(f.get("last_heartbeat_ms", 0)),
                    holdings=Holdings(
                        int(f.get("nodes", 0)), int(f.get("sessions", 0)), int(f.get("jobs", 0))
                    ),
                )
            )
        return out


class InstanceHeartbeat:
    """Keeps this instance's record and lease alive: one heartbeat at `start`, so the instance is listed at
    once, then one every `interval_s`; `stop` removes the record (a clean stop leaves nothing behind)."""

    def __init__(
        self,
        registry: InstanceRegistry,
        instance_id: str,
        address: str,
        interval_s: float,
        lease_ms: int,
        record_ttl_ms: int,
        started_ms: int,
        holdings: Callable[[], Holdings],
        metrics: SchedulerMetrics,
        on_claimed: Callable[[], None],
    ) -> None:
        """`on_claimed` is called (once) when a survivor has claimed this instance as dead: it was paused
        or cut off past its lease, and what it held has been taken over; it must stop."""
        self._registry = registry
        self._instance_id = instance_id
        self._address = address
        self._interval_s = interval_s
        self._lease_ms = lease_ms
        self._record_ttl_ms = record_ttl_ms
        self._started_ms = started_ms
        self._holdings = holdings
        self._metrics = metrics
        self._on_claimed = on_claimed
        self._first = True
        self._task: asyncio.Task[None] | None = None
        self._renewal: asyncio.Task[bool] | None = None  # the inbox lease's renewal in flight

    async def start(self) -> None:
        await self._beat()
        if self._renewal is not None:  # the first renewal (clearing a predecessor's claim) before serving
            await asyncio.shield(self._renewal)
        await self._registry.list()  # drops the ids of instances whose records expired
        self._task = asyncio.create_task(self._run(), name="instance-heartbeat")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        await cancel_and_wait(self._renewal)
        try:
            await self._registry.deregister(self._instance_id)
        except RedisError as exc:  # its lease lapses on its own; survivors see it dead then
            log.warning("instance not deregistered; its lease will lapse", extra={"error": repr(exc)})

    async def _beat(self) -> bool:
        """One renewal; False when this instance was claimed as dead (it must stop).

        The inbox lease lives in the instance's own hash slot, the record in the registry's: on a Redis
        Cluster, two shards. The inbox's renewal runs in the background (one at a time, its outcome read at
        the next beat), so its shard away (a master restarting, a stalled one) neither stops nor delays the
        record's: a survivor reading the registry sees the record renewed, every interval, and does not count
        this instance unrenewed."""
        done = self._renewal
        if done is not None and done.done():
            self._renewal = None
            if not done.cancelled():
                if (exc := done.exception()) is not None:
                    self._metrics.redis_errors.labels("instance_heartbeat").inc()
                    log.warning("inbox lease not renewed", extra={"error": repr(exc)})
                elif done.result() is False:
                    log.error(
                        "this instance was declared dead by the fleet (its lease lapsed and a survivor took"
                        " over what it held): stopping",
                        extra={"instance_id": self._instance_id},
                    )
                    self._on_claimed()
                    return False
        if self._renewal is None:
            first, self._first = self._first, False
            self._renewal = asyncio.create_task(
                self._registry.renew_inbox(self._instance_id, self._lease_ms, self._record_ttl_ms, first),
                name="inbox-lease",
            )
        new = await self._registry.heartbeat(
            self._instance_id,
            self._address,
            self._lease_ms,
            self._record_ttl_ms,
            self._started_ms,
            self._holdings(),
        )
        if new:
            log.info("instance recorded in the fleet", extra={"instance_id": self._instance_id})
        return True

    async def _run(self) -> None:
        while True:
            raise_if_cancelling()
            await asyncio.sleep(self._interval_s)
            try:
                if not await self._beat():
                    return
            except (RedisError, OSError) as exc:
                raise_if_cancelling()
                self._metrics.redis_errors.labels("instance_heartbeat").inc()
                log.warning("instance heartbeat not recorded", extra={"error": repr(exc)})
            except Exception:  # a bug, or the Redis client's (a torn connection): the lease must go on
                raise_if_cancelling()
                log.exception("instance heartbeat failed; going on")
