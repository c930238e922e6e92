"""Redis: key layout, Lua scripts, connections and the embedded redis-server."""

from lingua_grpc.store._connection import connect_redis, redis_client, text
from lingua_grpc.store._embedded import EmbeddedRedis
from lingua_grpc.store._keys import InstanceKeys, JobKeys, RegistryKeys, slot_member
from lingua_grpc.store._memory import (
    MemoryReading,
    MemoryWatch,
    SessionRetention,
    fit_warning,
    read_memory,
)
from lingua_grpc.store._scripts import (
    Claim,
    ClaimOutcome,
    Completed,
    DrainOutcome,
    HandOff,
    HeartbeatOutcome,
    RegisterOutcome,
    Reservation,
    ScriptBook,
    ScriptCall,
    SessionClaim,
    Started,
)

__all__ = [
    "Claim",
    "ClaimOutcome",
    "Completed",
    "DrainOutcome",
    "EmbeddedRedis",
    "HandOff",
    "HeartbeatOutcome",
    "InstanceKeys",
    "JobKeys",
    "MemoryReading",
    "MemoryWatch",
    "RegisterOutcome",
    "RegistryKeys",
    "Reservation",
    "ScriptBook",
    "ScriptCall",
    "SessionClaim",
    "SessionRetention",
    "Started",
    "connect_redis",
    "fit_warning",
    "read_memory",
    "redis_client",
    "slot_member",
    "text",
]
