"""Per-pair FIFOs of jobs waiting for a free node slot, and the slots freed since the queues' last turn."""

from __future__ import annotations

import collections
from collections.abc import Iterable

from lingua_grpc.dispatch._ticket import Ticket
from lingua_grpc.registry import LanguagePair


class PairQueues:
    def __init__(self, max_per_pair: int) -> None:
        self.max_per_pair = max_per_pair
        self._queues: dict[LanguagePair, collections.deque[Ticket]] = {}
        self._freed: collections.Counter[str] = collections.Counter()  # per node, not yet offered

    def __len__(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def waiting(self, pair: LanguagePair) -> int:
        queue = self._queues.get(pair)
        return len(queue) if queue else 0

    def full(self, pair: LanguagePair) -> bool:
        return self.waiting(pair) >= self.max_per_pair

    def oldest_submitted(self, pair: LanguagePair) -> float | None:
        queue = self._queues.get(pair)
        if not queue:
            return None
        return min(queue[0].submitted_at, queue[-1].submitted_at)  # a job queued again goes to the head

    def append(self, ticket: Ticket) -> None:
        self._queues.setdefault(ticket.spec.pair, collections.deque()).append(ticket)

    def push_front(self, ticket: Ticket) -> None:
        """A job whose attempt ended without an outcome waits ahead of the others."""
        self._queues.setdefault(ticket.spec.pair, collections.deque()).appendleft(ticket)

    def remove(self, ticket: Ticket) -> bool:
        queue = self._queues.get(ticket.spec.pair)
        if queue is not None and ticket in queue:
            queue.remove(ticket)
            return True
        return False

    def of_session(self, session_id: str) -> list[Ticket]:
        return [t for q in self._queues.values() for t in q if t.spec.session_id == session_id]

    def pairs(self) -> list[LanguagePair]:
        return list(self._queues)

    def head(self, pair: LanguagePair) -> Ticket | None:
        queue = self._queues.get(pair)
        return queue[0] if queue else None

    # Slots freed since the queues' last turn: a queued job tries such a node first.
    def slot_freed(self, node_id: str) -> None:
        self._freed[node_id] += 1

    def take_freed(self, serving: Iterable[str], excluded: set[str]) -> str | None:
        """A node among `serving` with a freed slot, not in `excluded` (that slot is consumed), or None."""
        serving = set(serving)
        for node_id in self._freed:
            if node_id in serving and node_id not in excluded:
                self._freed[node_id] -= 1
                if self._freed[node_id] <= 0:
                    del self._freed[node_id]
                return node_id
        return None

    def forget_freed(self) -> None:
        """Every queue had its turn: what is left freed, no waiting job could use."""
        self._freed.clear()
