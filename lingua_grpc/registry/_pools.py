"""Pools: groups of nodes per language pair.

By default there is one pool per pair some node serves, named after the pair. A pools file (TOML) can
replace the derived pool of a pair with configured ones, selecting members by node id and/or labels:

    [[pools]]
    name = "en-es-premium"
    pairs = ["en-es"]
    labels = { tier = "premium" }     # members carry every label listed (optional)

    [[pools]]
    name = "en-es-shared"
    pairs = ["en-es", "en-zh"]
    nodes = ["gpu-1", "gpu-2"]        # members are these nodes (optional)

A node is a member only if it serves the pair. Pairs that no configured pool names keep their derived pool.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from lingua_grpc.registry._model import NODE_ID, LanguagePair, NodeRecord


@dataclass(frozen=True, slots=True)
class PoolSpec:
    name: str
    pairs: tuple[LanguagePair, ...]
    node_ids: frozenset[str] | None = None
    labels: tuple[tuple[str, str], ...] = ()

    def selects(self, node: NodeRecord) -> bool:
        if self.node_ids is not None and node.node_id not in self.node_ids:
            return False
        have = node.capabilities.label_dict()
        return all(have.get(k) == v for k, v in self.labels)


@dataclass(frozen=True, slots=True)
class Pool:
    name: str
    pair: LanguagePair
    node_ids: tuple[str, ...]
    configured: bool = False


def load_pools_file(path: str | Path) -> tuple[PoolSpec, ...]:
    """Reads and checks a pools file; raises ValueError naming the pool and field at fault."""
    with open(path, "rb") as f:
        data = tomllib.load(f)
    specs: list[PoolSpec] = []
    names: set[str] = set()
    for i, raw in enumerate(data.get("pools", [])):
        where = f"{path}: pools[{i}]"
        name = raw.get("name")
        if not isinstance(name, str) or not NODE_ID.match(name):
            raise ValueError(f"{where}: name must be 1 to 128 letters, digits, '.', '_' or '-'")
        if name in names:
            raise ValueError(f"{where}: pool name {name!r} is used twice")
        names.add(name)
        pairs = raw.get("pairs")
        if not isinstance(pairs, list) or not pairs:
            raise ValueError(f'{where} ({name}): pairs must be a non-empty list such as ["en-es"]')
        try:
            parsed = tuple(LanguagePair.parse(p) for p in pairs)
        except Exception as exc:
            raise ValueError(f"{where} ({name}): {exc}") from None
        nodes = raw.get("nodes")
        labels = raw.get("labels", {})
        if nodes is not None and not (isinstance(nodes, list) and all(isinstance(n, str) for n in nodes)):
            raise ValueError(f"{where} ({name}): nodes must be a list of node ids")
        if not isinstance(labels, dict):
            raise ValueError(f'{where} ({name}): labels must be a table such as {{ tier = "premium" }}')
        specs.append(
            PoolSpec(
                name=name,
                pairs=parsed,
                node_ids=frozenset(nodes) if nodes is not None else None,
                labels=tuple(sorted((str(k), str(v)) for k, v in labels.items())),
            )
        )
    return tuple(specs)


def derive_pools(nodes: Iterable[NodeRecord], specs: tuple[PoolSpec, ...] = ()) -> tuple[Pool, ...]:
    """Pools for every pair served, sorted by pair then name. Pure."""
    by_pair: dict[LanguagePair, list[NodeRecord]] = {}
    for node in nodes:
        for pair in node.capabilities.pairs_served():
            by_pair.setdefault(pair, []).append(node)
    configured_pairs = {pair for spec in specs for pair in spec.pairs}
    pools: list[Pool] = []
    for pair, members in by_pair.items():
        if pair not in configured_pairs:
            pools.append(Pool(str(pair), pair, tuple(sorted(n.node_id for n in members))))
    for spec in specs:
        for pair in spec.pairs:
            members = [n for n in by_pair.get(pair, ()) if spec.selects(n)]
            pools.append(Pool(spec.name, pair, tuple(sorted(n.node_id for n in members)), configured=True))
    pools.sort(key=lambda p: (p.pair, p.name))
    return tuple(pools)
