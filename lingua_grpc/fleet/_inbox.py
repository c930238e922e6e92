"""Hand-offs between scheduler instances, through Redis: each instance reads its own inbox (a Stream, with a
consumer group) and writes to the others' through `Courier`.

Why a Stream with a consumer group: an entry stays in the stream until its reader acknowledges it (XACK)
after applying it, so what an instance had read but not applied when it died is still there for the survivor
that takes over (and XPENDING shows an on-call engineer what is in flight). Entries are deleted once
acknowledged, so the stream holds only work not yet done; `handoff.lua` bounds it and lands nothing once the
reader's lease lapsed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from lingua_grpc.clock import Clock
from lingua_grpc.fleet._messages import Assign, Cancel, Message, decode, encode
from lingua_grpc.metrics import SchedulerMetrics
from lingua_grpc.store import HandOff, InstanceKeys, ScriptBook
from lingua_grpc.tasks import cancel_and_wait, raise_if_cancelling

log = logging.getLogger(__name__)

GROUP = "lingua"


@dataclass(frozen=True, slots=True)
class InboxSettings:
    max_entries: int  # fleet_inbox_max_entries
    read_count: int  # fleet_inbox_read_count
    block_ms: int  # fleet_inbox_block_ms


def kind_of(message: Message) -> str:
    return type(message).__name__.lower().replace("relayed", "event")


class Courier:
    """Sends messages to other instances' inboxes. What is queued while a round trip is in flight goes in
    the next one (one pipeline), so a busy instance pays one round trip per batch, not per message."""

    def __init__(
        self, scripts: ScriptBook, prefix: str, settings: InboxSettings, metrics: SchedulerMetrics
    ) -> None:
        self._scripts = scripts
        self._prefix = prefix
        self._settings = settings
        self._metrics = metrics
        self._pending: list[tuple[str, Message, asyncio.Future[HandOff]]] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="fleet-courier")

    async def stop(self) -> None:
        """Sends what is queued (bounded by one round trip), then stops."""
        if self._pending and self._task is not None and not self._task.done():
            with contextlib.suppress(TimeoutError, RedisError, OSError):
                await asyncio.wait_for(
                    asyncio.gather(*(f for _, _, f in self._pending), return_exceptions=True), 2
                )
        await cancel_and_wait(self._task)
        for _, _, future in self._pending:
            if not future.done():
                future.cancel()

    def send(self, to: str, message: Message) -> asyncio.Future[HandOff]:
        """Queues `message` for instance `to`; the future says whether it landed (RedisError when Redis
        failed)."""
        future: asyncio.Future[HandOff] = asyncio.get_running_loop().create_future()
        self._pending.append((to, message, future))
        self._wake.set()
        return future

    async def _run(self) -> None:
        while True:
            raise_if_cancelling()
            await self._wake.wait()
            self._wake.clear()
            batch, self._pending = self._pending, []
            if not batch:
                continue
            calls = [
                self._scripts.handoff(
                    InstanceKeys(self._prefix, to), max_entries=self._settings.max_entries, fields=encode(m)
                )
                for to, m, _ in batch
            ]
            try:
                replies = await self._scripts.run_pipelined(*calls)
            except Exception as exc:  # Redis failed (or a bug): the batch fails, its senders are told
                raise_if_cancelling()
                if isinstance(exc, RedisError | OSError):
                    self._metrics.redis_errors.labels("handoff").inc()
                else:
                    log.exception("hand-off batch failed")
                for _, _, future in batch:
                    if not future.done():
                        future.set_exception(RedisError(f"hand-off not written: {exc!r}"))
                continue
            for (_, message, future), reply in zip(batch, replies, strict=True):
                outcome = "delivered" if reply.delivered else "full" if reply.full else "gone"
                self._metrics.handoffs.labels(kind_of(message), outcome).inc()
                if not future.done():
                    future.set_result(reply)


class Inbox:
    """Reads this instance's inbox and applies each message (`apply`), in order; acknowledges and deletes
    entries once applied."""

    def __init__(
        self,
        redis: Redis,
        keys: InstanceKeys,
        apply: Callable[[Message], Awaitable[None]],
        settings: InboxSettings,
        metrics: SchedulerMetrics,
        clock: Clock,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._apply = apply
        self._settings = settings
        self._metrics = metrics
        self._clock = clock
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._create_group()
        self._task = asyncio.create_task(self._run(), name="fleet-inbox")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)

    async def _create_group(self) -> None:
        try:
            await self._redis.xgroup_create(self._keys.inbox, GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def _run(self) -> None:
        consumer = self._keys.instance_id
        # This consumer's pending entries (id 0) are read first: those of a previous process under the same
        # instance id (killed between reading and acknowledging, and restarted before its lease lapsed, so no
        # survivor claims it: issue 27), and after a failure midway through a batch those read but not
        # acknowledged. Applying one twice is fenced like any repeat.
        pending_first = True
        while True:
            raise_if_cancelling()
            try:
                reply: Any = await self._redis.xreadgroup(
                    GROUP,
                    consumer,
                    {self._keys.inbox: "0" if pending_first else ">"},
                    count=self._settings.read_count,
                    block=None if pending_first else self._settings.block_ms,
                )
                entries = entries_of(reply[0][1] if reply else [])
                pending_first = pending_first and bool(entries)
                for entry_id, fields in entries:
                    await self._apply_one(entry_id, fields)
                if entries:
                    ids = [entry_id for entry_id, _ in entries]
                    async with self._redis.pipeline(transaction=False) as pipe:
                        pipe.xack(self._keys.inbox, GROUP, *ids)
                        pipe.xdel(self._keys.inbox, *ids)
                        pipe.xlen(self._keys.inbox)
                        _, _, depth = await pipe.execute()
                    self._metrics.inbox_depth.set(depth)
            except ResponseError as exc:
                raise_if_cancelling()
                if "NOGROUP" in str(exc):  # Redis lost the stream (restart without data): make it again
                    log.warning("inbox lost by Redis; creating it again", extra={"error": repr(exc)})
                    with contextlib.suppress(RedisError):
                        await self._create_group()
                    continue
                self._metrics.redis_errors.labels("inbox").inc()
                log.warning("inbox read failed", extra={"error": repr(exc)})
                pending_first = True
                await asyncio.sleep(self._settings.block_ms / 1000)
            except (RedisError, OSError) as exc:
                raise_if_cancelling()
                self._metrics.redis_errors.labels("inbox").inc()
                log.warning("inbox read failed", extra={"error": repr(exc)})
                pending_first = True
                await asyncio.sleep(self._settings.block_ms / 1000)
            except Exception:  # a bug, or the Redis client's (a torn connection): the inbox must go on
                raise_if_cancelling()
                log.exception("inbox read failed; going on")
                pending_first = True
                await asyncio.sleep(self._settings.block_ms / 1000)

    async def _apply_one(self, entry_id: bytes, fields: dict[bytes, bytes]) -> None:
        try:
            message = decode(fields)
        except (ValueError, KeyError) as exc:
            log.error("inbox entry not understood; dropped", extra={"entry_id": entry_id, "error": repr(exc)})
            return
        self._metrics.handoff_seconds.labels(direction(message)).observe(
            max(0.0, (self._clock.now_ms() - message.sent_ms) / 1000)
        )
        try:
            await self._apply(message)
        except RedisError:
            raise
        except Exception:  # a bug in one message must not stop the inbox
            log.exception("inbox message not applied", extra={"entry_id": entry_id})


Entry = tuple[bytes, dict[bytes, bytes]]


def entries_of(raw: Any) -> list[Entry]:
    """Stream entries as redis-py returns them (XRANGE, XREADGROUP's per-stream list), typed; an entry
    deleted while pending comes back without fields and is skipped."""
    return [(entry_id, fields) for entry_id, fields in raw if fields]


def direction(message: Message) -> str:
    return "to_holder" if isinstance(message, Assign | Cancel) else "to_owner"
