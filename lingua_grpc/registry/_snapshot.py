"""RegistrySnapshot: an immutable view of the registry at one version, with a language-pair index.

Built off the hot path whenever the registry version changes, and swapped in with one assignment; readers
keep the reference they took, so a snapshot is never copied or locked.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from lingua_grpc.registry._model import LanguagePair, NodeRecord
from lingua_grpc.registry._pools import Pool, PoolSpec, derive_pools


@dataclass(frozen=True, slots=True)
class Stamp:
    """Which registry state a read saw. Versions count changes from 0; when Redis loses its data they start
    again, and the epoch (set by the first registration after) tells the two apart."""

    epoch: str
    version: int


@dataclass(frozen=True, slots=True)
class RegistrySnapshot:
    version: int
    nodes: Mapping[str, NodeRecord]
    pools: tuple[Pool, ...]
    pools_by_pair: Mapping[LanguagePair, tuple[Pool, ...]]
    pools_by_node: Mapping[str, tuple[str, ...]]
    built_ms: int
    epoch: str = ""  # the registry's epoch (see NodeRegistry.stamp): versions of two epochs are unrelated

    @property
    def stamp(self) -> Stamp:
        return Stamp(self.epoch, self.version)

    def pools_for(self, pair: LanguagePair) -> tuple[Pool, ...]:
        return self.pools_by_pair.get(pair, ())

    def serves(self, pair: LanguagePair) -> bool:
        return any(pool.node_ids for pool in self.pools_for(pair))

    def nodes_for(self, pair: LanguagePair) -> tuple[NodeRecord, ...]:
        ids = sorted({n for pool in self.pools_for(pair) for n in pool.node_ids})
        return tuple(self.nodes[i] for i in ids)


def build_snapshot(
    version: int, records: Iterable[NodeRecord], specs: tuple[PoolSpec, ...], built_ms: int, epoch: str = ""
) -> RegistrySnapshot:
    """Pure: the same inputs give the same snapshot."""
    nodes = {r.node_id: r for r in sorted(records, key=lambda r: r.node_id)}
    pools = derive_pools(nodes.values(), specs)
    by_pair: dict[LanguagePair, list[Pool]] = {}
    by_node: dict[str, dict[str, None]] = {}  # an ordered set: linear in the pools' total size
    for pool in pools:
        by_pair.setdefault(pool.pair, []).append(pool)
        for node_id in pool.node_ids:
            by_node.setdefault(node_id, {})[pool.name] = None
    return RegistrySnapshot(
        version=version,
        nodes=MappingProxyType(nodes),
        pools=pools,
        pools_by_pair=MappingProxyType({k: tuple(v) for k, v in by_pair.items()}),
        pools_by_node=MappingProxyType({k: tuple(v) for k, v in by_node.items()}),
        built_ms=built_ms,
        epoch=epoch,
    )


EMPTY_SNAPSHOT = build_snapshot(0, (), (), 0)
