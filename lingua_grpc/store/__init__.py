"""Redis: key layout, Lua scripts, connections and the embedded redis-server."""

from lingua_grpc.store._connection import connect_redis, redis_client, text
from lingua_grpc.store._embedded import EmbeddedRedis
from lingua_grpc.store._keys import InstanceKeys, JobKeys, RegistryKeys, slot_member
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
    "RegisterOutcome",
    "RegistryKeys",
    "Reservation",
    "ScriptBook",
    "ScriptCall",
    "SessionClaim",
    "Started",
    "connect_redis",
    "redis_client",
    "slot_member",
    "text",
]
