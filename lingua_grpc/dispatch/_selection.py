"""Candidate selection: a pure function over one registry snapshot."""

from __future__ import annotations

import random
from collections.abc import Collection
from dataclasses import dataclass

from lingua_grpc.registry import LanguagePair, NodeRecord, NodeState, RegistrySnapshot


@dataclass(frozen=True, slots=True)
class Request:
    pair: LanguagePair
    needs_tts: bool
    preferred_node: str | None = None  # the node the session used last


def _load(node: NodeRecord) -> float:
    return node.reserved_slots / node.max_concurrency


def rank_candidates(
    snapshot: RegistrySnapshot, request: Request, exclude: Collection[str], rng: random.Random
) -> list[str]:
    """Node ids to try, best first.

    Eligible: in a pool for the pair, up (not draining), lease alive, synthesizes the target language when
    TTS is wanted, not excluded. Order: the session's last node first (stickiness), then the nodes with free
    slots by power of two choices (of two random candidates, the less loaded goes first), then the nodes the
    snapshot shows full, since the snapshot may be older than the slots they freed; the Lua reservation is
    the authoritative check.
    """
    eligible = [
        node
        for node in snapshot.nodes_for(request.pair)
        if node.state is NodeState.UP
        and node.lease_remaining_ms > 0
        and node.node_id not in exclude
        and (not request.needs_tts or node.capabilities.synthesizes(request.pair.target))
    ]
    first: list[str] = []
    if request.preferred_node is not None:
        for node in eligible:
            if node.node_id == request.preferred_node and node.free_slots > 0:
                first.append(node.node_id)
                eligible.remove(node)
                break
    free = [n for n in eligible if n.free_slots > 0]
    full = [n for n in eligible if n.free_slots == 0]
    ranked = first
    while free:
        if len(free) == 1:
            pick = free[0]
        else:
            a, b = rng.sample(free, 2)
            pick = a if _load(a) <= _load(b) else b
        ranked.append(pick.node_id)
        free.remove(pick)
    ranked.extend(n.node_id for n in sorted(full, key=_load))
    return ranked
