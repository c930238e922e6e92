"""SnapshotCache: keeps the current RegistrySnapshot fresh in the background.

Every `poll_s` it reads the registry version (one GET) and rebuilds when it moved; every `refresh_s` it
rebuilds anyway, to pick up node loads. Changes made through this instance call `refresh()` at once, so
they show without waiting for the poll; changes made through other instances show within `poll_s`.
Readers take `cache.current`, an immutable snapshot swapped in with one assignment. Watchers get each new
version once, in order (several quick versions may reach a slow watcher as the latest one).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from functools import partial

from redis.exceptions import RedisError

from lingua_grpc.clock import Clock, SystemClock
from lingua_grpc.metrics import SchedulerMetrics
from lingua_grpc.registry._pools import PoolSpec
from lingua_grpc.registry._snapshot import EMPTY_SNAPSHOT, RegistrySnapshot, Stamp, build_snapshot
from lingua_grpc.registry._store import NodeRegistry
from lingua_grpc.tasks import cancel_and_wait, raise_if_cancelling

log = logging.getLogger(__name__)

SnapshotListener = Callable[[RegistrySnapshot], None]


class SnapshotCache:
    def __init__(
        self,
        registry: NodeRegistry,
        pool_specs: tuple[PoolSpec, ...],
        poll_s: float,
        refresh_s: float,
        metrics: SchedulerMetrics,
        clock: Clock | None = None,
    ) -> None:
        self._registry = registry
        self._poll_s = poll_s
        self._specs = pool_specs
        self._refresh_s = refresh_s
        self._metrics = metrics
        self._clock = clock or SystemClock()
        self._current = EMPTY_SNAPSHOT
        self._changed = asyncio.Condition()
        self._watching = True  # False once the instance stops: watches end in order
        self._listeners: list[SnapshotListener] = []
        self._redis_listeners: list[Callable[[bool], None]] = []
        self.redis_reachable = True
        self._task: asyncio.Task[None] | None = None
        self._rebuild_lock = asyncio.Lock()

    @property
    def current(self) -> RegistrySnapshot:
        return self._current

    def add_listener(self, listener: SnapshotListener) -> None:
        """Called (synchronously, in the cache's task) with each snapshot of a new version."""
        self._listeners.append(listener)

    def add_redis_listener(self, listener: Callable[[bool], None]) -> None:
        """Called with False when Redis stops answering, and with True when it answers again."""
        self._redis_listeners.append(listener)

    def _set_reachable(self, reachable: bool) -> None:
        self._metrics.redis_up.set(1 if reachable else 0)
        if reachable != self.redis_reachable:
            self.redis_reachable = reachable
            for listener in self._redis_listeners:
                listener(reachable)

    async def start(self) -> None:
        await self.refresh()
        self._task = asyncio.create_task(self._run(), name="snapshot-cache")

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)

    async def refresh(self) -> RegistrySnapshot:
        """Re-reads Redis now and swaps in the result; returns the current snapshot."""
        async with self._rebuild_lock:  # one read at a time, so an older read never replaces a newer one
            started = time.perf_counter()
            stamp, records = await self._registry.read()
            snapshot = build_snapshot(stamp.version, records, self._specs, self._clock.now_ms(), stamp.epoch)
            self._metrics.snapshot_build_seconds.observe(time.perf_counter() - started)
            self._metrics.snapshot_builds.inc()
            previous = self._current
            if (previous.epoch and stamp.epoch != previous.epoch) or stamp.version < previous.version:
                # Redis lost its data (restart without persistence): versions start again from 0, and the
                # first registration after sets a new epoch.
                log.warning(
                    "registry started again: Redis lost it",
                    extra={"from_version": previous.version, "to_version": stamp.version},
                )
            self._current = snapshot
            self._metrics.registry_version.set(stamp.version)
        if snapshot.stamp != previous.stamp:
            for listener in self._listeners:
                try:
                    listener(snapshot)
                except Exception:
                    log.exception("snapshot listener failed")
            async with self._changed:
                self._changed.notify_all()
        return snapshot

    async def watch(self, after_version: int = 0, after_epoch: str = "") -> AsyncIterator[RegistrySnapshot]:
        """Yields the current snapshot (unless it is `after_version`, of `after_epoch` when given), then each
        new version once."""
        snapshot = self._current
        if after_version == 0 or snapshot.version != after_version or after_epoch not in ("", snapshot.epoch):
            yield snapshot
        last = snapshot.stamp
        while self._watching:
            async with self._changed:
                await self._changed.wait_for(partial(self._differs_from, last))
            if not self._watching:
                return
            snapshot = self._current
            last = snapshot.stamp
            yield snapshot

    async def end_watches(self) -> None:
        """Every `watch` ends (returns) now: the instance is stopping."""
        self._watching = False
        async with self._changed:
            self._changed.notify_all()

    def _differs_from(self, stamp: Stamp) -> bool:
        return not self._watching or self._current.stamp != stamp

    async def _run(self) -> None:
        backoff = self._poll_s
        last_full = self._clock.monotonic()
        failures = 0
        while True:
            raise_if_cancelling()
            await asyncio.sleep(backoff)
            try:
                stale = self._clock.monotonic() - last_full >= self._refresh_s
                if stale or await self._registry.stamp() != self._current.stamp:
                    await self.refresh()
                    last_full = self._clock.monotonic()
                self._set_reachable(True)
                failures, backoff = 0, self._poll_s
            except (RedisError, OSError) as exc:
                raise_if_cancelling()
                failures += 1
                self._metrics.redis_errors.labels("snapshot").inc()
                if failures == 1:
                    # One failure can be a pooled connection left over from before a Redis restart (it is
                    # dropped on error): read again at once, on a fresh one, before calling Redis unreachable.
                    backoff = 0.0
                    continue
                self._set_reachable(False)
                backoff = min(max(backoff, self._poll_s) * 2, max(self._refresh_s, 1.0))
                log.warning("registry read failed, retrying", extra={"error": repr(exc), "in_s": backoff})
            except Exception:  # a bug, or the Redis client's (a torn connection): snapshots must go on
                raise_if_cancelling()
                log.exception("registry read failed; going on")
                backoff = max(self._refresh_s, 1.0)
