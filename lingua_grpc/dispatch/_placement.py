"""Placement: one try at putting a job's next attempt on a node, over one snapshot.

Rank the candidates, reserve a slot (Lua), start the attempt (Lua, fenced by the attempt number) and hand it
to the node's stream. The outcome says what happened; the dispatcher applies it to the job.
"""

from __future__ import annotations

import enum
import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from lingua_grpc.clock import Clock
from lingua_grpc.dispatch._selection import Request, rank_candidates
from lingua_grpc.dispatch._ticket import Attempt, Pending, Ticket
from lingua_grpc.jobs import Assignment, JobOutput, JobState, JobStore
from lingua_grpc.registry import SnapshotCache

log = logging.getLogger(__name__)

VIA = "via:"  # connection id of an attempt handed to another instance: via:<instance id>


class JobTransport(Protocol):
    """How an attempt reaches a node: its stream on this instance, or the instance holding it."""

    async def deliver(self, node_id: str, assignment: Assignment) -> str | None:
        """Sends the attempt; returns the id of the connection it went on (for another instance's node,
        `via:<instance>`), or None if it could not."""
        ...

    def cancel(self, node_id: str, job_id: str, attempt: int, reason: str) -> None: ...

    def forward(self, owner: str, node_id: str, output: JobOutput) -> None:
        """Hands a result this instance recorded to the instance that owns its session now (it delivers)."""
        ...


class Placed(enum.Enum):
    ON_NODE = "on_node"  # the attempt is on a node's stream
    NO_SLOT = "no_slot"  # no candidate had a free slot (attempt numbers may have been spent)
    ENDED = "ended"  # the job ended meanwhile, or another instance started this attempt


@dataclass(frozen=True, slots=True)
class Placement:
    outcome: Placed
    attempt: Attempt  # the job's attempt now: on a node for ON_NODE, a number only otherwise
    recorded: bool  # the job is recorded in Redis now


class Placer:
    def __init__(
        self,
        store: JobStore,
        cache: SnapshotCache,
        transport: JobTransport,
        attempt_deadline_ms: Callable[[int], int],
        clock: Clock,
        rng: random.Random,
    ) -> None:
        """`attempt_deadline_ms`: the time an attempt of an utterance of that many ms has on its node."""
        self._store = store
        self._cache = cache
        self._transport = transport
        self._attempt_deadline_ms = attempt_deadline_ms
        self._clock = clock
        self._rng = rng

    async def place(self, ticket: Ticket, optimistic: bool = False, first: str | None = None) -> Placement:
        """Tries the ranked candidates (`first` ahead, when it is one) until one takes the next attempt.

        Optimistic (a fresh job with nothing queued for its pair, or a queued one given a node whose slot
        just freed): the first candidate's reservation and the job's start go in one round trip. When that
        node turns out full, the attempt number is spent on it; the next candidates are tried reservation
        first, and a job left without a node is recorded CREATED again (it waits in the queue). A node whose
        stream cannot take the attempt is added to `ticket.excluded`.

        Redis errors propagate, with `ticket.pending` naming the writes in flight (their outcome unknown): the
        next try starts by repeating them (reserve and start are idempotent for one node and attempt).
        """
        snapshot = self._cache.current  # the one snapshot read for this placement
        spec = ticket.spec
        number, recorded = ticket.attempt.number, ticket.recorded
        request = Request(spec.pair, spec.tts, ticket.preferred_node)
        candidates = rank_candidates(snapshot, request, ticket.avoided(snapshot.stamp), self._rng)
        resolving = ticket.pending
        if resolving is not None:
            # Whatever the snapshot says now (that node may look full with this very reservation), the writes
            # whose reply was lost go again first, pipelined as on the happy path.
            first, optimistic, number = resolving.node_id, True, resolving.number
            if first not in candidates:
                candidates.insert(0, first)
        if first is not None:
            if first in candidates:
                candidates.remove(first)
                candidates.insert(0, first)
            else:
                optimistic = False  # that node cannot take this job: no reason to expect a free slot
        unplaced = False  # the record names a node that holds no slot for its attempt
        for node_id in candidates:
            attempt = number + 1
            ticket.pending = Pending(node_id, number)  # cleared once the outcome is read
            if optimistic:
                optimistic = False
                outcome, started = await self._store.reserve_and_start(
                    node_id, spec, number, ticket.answers_sent
                )
                recorded = True
                if not outcome.held:
                    if started is None:
                        ticket.pending = None
                        return Placement(Placed.ENDED, Attempt(number), recorded)
                    number, unplaced = started, True
                    continue
            else:
                outcome = await self._store.reserve(node_id, spec.job_id, attempt)
                if not outcome.held:
                    continue  # full, draining, or gone (maybe registering again): the next candidate
                _, started = await self._store.start(spec, number, node_id, ticket.answers_sent)
                recorded = True
            if started is None:  # the job ended meanwhile, another instance started this attempt, or the
                # session is another instance's now
                await self._store.release(node_id, spec.job_id, attempt)
                ticket.pending = None
                return Placement(Placed.ENDED, Attempt(number), recorded)
            if started != attempt:
                # Recorded anew (Redis lost the job): hold the slot under the attempt number it now has.
                log.warning(
                    "job record was lost; recorded it again",
                    extra={"job_id": spec.job_id, "attempt": started},
                )
                await self._store.release(node_id, spec.job_id, attempt)
                if not (await self._store.reserve(node_id, spec.job_id, started)).held:
                    number, unplaced = started, True
                    continue
            deadline_ms = self._clock.now_ms() + self._attempt_deadline_ms(spec.duration_ms)
            connection_id = await self._transport.deliver(node_id, Assignment(spec, started, deadline_ms))
            if connection_id is None:
                await self._store.release(node_id, spec.job_id, started)
                number, unplaced = started, True
                ticket.excluded.add(node_id)
                continue
            ticket.pending = None
            placed = Attempt(started, node_id, connection_id, placed_at=self._clock.monotonic())
            return Placement(Placed.ON_NODE, placed, recorded)
        if unplaced:
            await self._store.transition(
                spec.job_id, number, (JobState.ASSIGNED,), JobState.CREATED, node_id=""
            )
        ticket.pending = None
        return Placement(Placed.NO_SLOT, Attempt(number), recorded)
