"""The node registry: domain types, pools, versioned snapshots and their Redis store."""

from lingua_grpc.registry._cache import SnapshotCache, SnapshotListener
from lingua_grpc.registry._model import (
    Gpu,
    LanguagePair,
    NodeCapabilities,
    NodeLoad,
    NodeRecord,
    NodeState,
    Registration,
    RegistrationLimits,
    canonical_language,
)
from lingua_grpc.registry._pools import Pool, PoolSpec, derive_pools, load_pools_file
from lingua_grpc.registry._snapshot import EMPTY_SNAPSHOT, RegistrySnapshot, Stamp, build_snapshot
from lingua_grpc.registry._store import NodeRegistry, Registered
from lingua_grpc.store import DrainOutcome, HeartbeatOutcome

__all__ = [
    "EMPTY_SNAPSHOT",
    "DrainOutcome",
    "Gpu",
    "HeartbeatOutcome",
    "LanguagePair",
    "NodeCapabilities",
    "NodeLoad",
    "NodeRecord",
    "NodeRegistry",
    "NodeState",
    "Pool",
    "PoolSpec",
    "Registered",
    "Registration",
    "RegistrationLimits",
    "RegistrySnapshot",
    "SnapshotCache",
    "SnapshotListener",
    "Stamp",
    "build_snapshot",
    "canonical_language",
    "derive_pools",
    "load_pools_file",
]
