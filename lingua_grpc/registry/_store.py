"""NodeRegistry: the registry's operations on Redis, each one Lua script (one hash slot) or one read."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from redis.asyncio import Redis

from lingua_grpc.registry._model import NodeCapabilities, NodeLoad, NodeRecord, NodeState, Registration
from lingua_grpc.registry._snapshot import Stamp
from lingua_grpc.store import (
    DrainOutcome,
    HeartbeatOutcome,
    RegisterOutcome,
    RegistryKeys,
    ScriptBook,
    slot_member,
    text,
)


@dataclass(frozen=True, slots=True)
class Registered:
    version: int
    changed: bool
    held_by_another: bool = False  # a live registration of the id belongs to another credential: refused
    freed: tuple[str, ...] = ()  # slot members ('job_id#attempt') the node does not run, freed by this

    @property
    def slots_freed(self) -> int:
        return len(self.freed)


class NodeRegistry:
    def __init__(self, redis: Redis, keys: RegistryKeys, scripts: ScriptBook) -> None:
        self._redis = redis
        self._keys = keys
        self._scripts = scripts

    async def register(
        self,
        registration: Registration,
        instance_id: str,
        connection_id: str,
        lease_ms: int,
        holder: str = "anonymous",  # the credential's name; "anonymous" is every caller when they are off
    ) -> Registered:
        caps = registration.capabilities
        version, outcome, freed = await self._scripts.run(
            self._scripts.register_node(
                self._keys,
                registration.node_id,
                capabilities_json=caps.to_json(),
                max_concurrency=caps.max_concurrency,
                instance_id=instance_id,
                connection_id=connection_id,
                lease_ms=lease_ms,
                credential=holder,
                holding=[slot_member(job_id, attempt) for job_id, attempt in registration.running],
            )
        )
        return Registered(
            version,
            outcome is RegisterOutcome.CHANGED,
            held_by_another=outcome is RegisterOutcome.HELD_BY_ANOTHER,
            freed=tuple(freed),
        )

    async def heartbeat(
        self, node_id: str, connection_id: str, load: NodeLoad, lease_ms: int
    ) -> HeartbeatOutcome:
        return await self._scripts.run(
            self._scripts.heartbeat_node(
                self._keys, node_id, connection_id=connection_id, load_json=load.to_json(), lease_ms=lease_ms
            )
        )

    async def drain(self, node_id: str) -> tuple[DrainOutcome, int]:
        return await self._scripts.run(self._scripts.drain_node(self._keys, node_id))

    async def deregister(self, node_id: str, connection_id: str = "") -> bool:
        """Removes the node; with a connection id, only if that connection still holds it."""
        return await self._scripts.run(
            self._scripts.deregister_node(self._keys, node_id, connection_id=connection_id)
        )

    async def expire(self, node_id: str) -> bool:
        return await self._scripts.run(self._scripts.expire_node(self._keys, node_id))

    async def expire_lapsed(self) -> list[str]:
        """Removes every node whose lease lapsed, whichever instance held it. Returns their ids."""
        node_ids = [text(m) for m in await self._redis.smembers(self._keys.nodes)]
        if not node_ids:
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for node_id in node_ids:
                pipe.exists(self._keys.lease(node_id))
            alive = await pipe.execute()
        removed = []
        for node_id, is_alive in zip(node_ids, alive, strict=True):
            if not is_alive and await self.expire(node_id):  # the script checks the lease again, atomically
                removed.append(node_id)
        return removed

    async def stamp(self) -> Stamp:
        """The registry's version and epoch: one read (both keys share the `{registry}` slot)."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.get(self._keys.version)
            pipe.get(self._keys.epoch)
            version, epoch = await pipe.execute()
        return _stamp(version, epoch)

    async def read(self, max_attempts: int = 5) -> tuple[Stamp, list[NodeRecord]]:
        """A consistent read of every node: retried when the version (or epoch) moves during the read.

        Pipelines, not transactions: every change of membership or capabilities bumps the version, so
        reading the version before and after brackets the read (and a Redis Cluster client, whose
        transactions redis-py's async client mishandles, reads the same way)."""
        k = self._keys
        for _ in range(max_attempts):
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.get(k.version)
                pipe.get(k.epoch)
                pipe.smembers(k.nodes)
                version, epoch, members = await pipe.execute()
            node_ids = sorted(text(m) for m in members)
            async with self._redis.pipeline(transaction=False) as pipe:
                for node_id in node_ids:
                    pipe.hgetall(k.node(node_id))
                    pipe.pttl(k.lease(node_id))
                pipe.get(k.version)
                pipe.get(k.epoch)
                replies = await pipe.execute()
            if replies[-2:] == [version, epoch]:
                return _stamp(version, epoch), _records(node_ids, replies[:-2])
        raise RuntimeError(f"registry kept changing during {max_attempts} reads")

    async def read_node(self, node_id: str) -> NodeRecord | None:
        k = self._keys
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.hgetall(k.node(node_id))
            pipe.pttl(k.lease(node_id))
            fields, ttl = await pipe.execute()
        records = _records([node_id], [fields, ttl])
        return records[0] if records else None


def _stamp(version: bytes | None, epoch: bytes | None) -> Stamp:
    return Stamp(text(epoch) if epoch else "", int(version or 0))


def _records(node_ids: Sequence[str], replies: Sequence[object]) -> list[NodeRecord]:
    records = []
    for i, node_id in enumerate(node_ids):
        fields = replies[2 * i]
        ttl = replies[2 * i + 1]
        if not isinstance(fields, dict) or b"capabilities" not in fields:
            continue  # removed between the two reads
        records.append(_record(node_id, fields, int(ttl) if isinstance(ttl, int) else 0))
    return records


def _record(node_id: str, h: dict[bytes, bytes], lease_ttl_ms: int) -> NodeRecord:
    return NodeRecord(
        node_id=node_id,
        state=NodeState(h.get(b"state", b"up").decode()),
        capabilities=NodeCapabilities.from_json(h[b"capabilities"]),
        load=NodeLoad.from_json(h.get(b"load", b"{}")),
        reserved_slots=int(h.get(b"reserved", 0)),
        instance_id=h.get(b"instance", b"").decode(),
        registered_ms=int(h.get(b"registered_ms", 0)),
        last_heartbeat_ms=int(h.get(b"last_heartbeat_ms", 0)),
        lease_remaining_ms=max(0, lease_ttl_ms),
    )
