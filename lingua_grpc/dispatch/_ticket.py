"""A job's life in the dispatcher: its phase, its current attempt, and where its outcome goes."""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass, field
from typing import Protocol

from lingua_grpc.jobs import JobOutput, JobProgress, JobSpec, SkipReason
from lingua_grpc.registry import Stamp


class JobSink(Protocol):
    """Where a job's outcome goes: its session."""

    closed: bool
    # Set when the session's stream ended but the session lives on (its client may resume it, here or on
    # another instance): its jobs keep running, unwatched here; what they say about themselves goes to
    # the instance named ('' for nobody yet: results are recorded in the store for the resume).
    handed_to: str | None

    def job_progress(self, index: int, event: JobProgress) -> None: ...

    def job_done(self, index: int, output: JobOutput, node_id: str, overhead: Overhead) -> None: ...

    def job_skipped(self, index: int, reason: SkipReason, message: str) -> None: ...

    def job_recorded(self, index: int) -> None:
        """The job is recorded in Redis now (its audio is safe there): the client may be told so."""
        ...


@dataclass(frozen=True, slots=True)
class Overhead:
    """Where a job's time went on the scheduler, for the result's timings."""

    queue_ms: int  # waiting for a free slot
    dispatch_us: int  # scheduler's own time from utterance end to the job written to the node's stream
    received_at: float  # monotonic time the node's result arrived (delivery time is measured from here)
    recorded: bool = False  # the result comes from the store (recorded by another instance, or earlier)
    attempts: int = 0  # attempts of the job that reached a node (what the client is told); 0: not known


class Phase(enum.Enum):
    NEW = "new"  # submitted; being placed for the first time
    QUEUED = "queued"  # waiting in its pair's queue for a free slot
    RUNNING = "running"  # its current attempt is on a node
    BETWEEN = "between"  # an attempt ended without an outcome; being placed again
    ENDED = "ended"  # its outcome is decided (result, skip, failure, session gone): nothing more happens


@dataclass(frozen=True, slots=True)
class Attempt:
    """The job's current attempt, replaced whole when it changes. A number may be spent without reaching a
    node (then `node_id` is None)."""

    number: int = 0  # the job's attempt number in Redis
    node_id: str | None = None
    connection_id: str | None = None  # the node stream it went on
    placed_at: float = 0.0  # monotonic time it was handed to the node's stream
    written_at: float = 0.0  # monotonic time the node's stream wrote it
    accepted: bool = False  # the node said it has it

    @property
    def reached_node(self) -> bool:
        """Whether the attempt surely reached its node: written to the node's stream here, or accepted."""
        return self.accepted or self.written_at > 0


@dataclass(frozen=True, slots=True)
class Pending:
    """A placement's Redis writes for attempt `number` + 1 on `node_id` whose reply was lost (a dropped
    connection, a restart): their outcome is unknown. They are idempotent, so the next try repeats exactly
    them, on that node with that number, and reads the outcome from their replies (never assumed failed)."""

    node_id: str
    number: int


@dataclass(eq=False)
class Ticket:
    """One job from submission to its end."""

    spec: JobSpec
    sink: JobSink
    queue_timeout_s: float
    preferred_node: str | None = None
    ended_at: float = 0.0  # monotonic time the utterance ended (as the session decided)
    phase: Phase = Phase.NEW
    attempt: Attempt = field(default_factory=Attempt)
    tries: int = 0  # attempts that reached a node: at most DispatchSettings.max_attempts
    placements: int = 0  # attempts handed towards a node, reached or not (bounds those that never reach one)
    pending: Pending | None = None  # Redis writes of the last placement try whose outcome is unknown
    store_wait_until: float = 0.0  # monotonic deadline while it waits for Redis to record it; 0: not waiting
    excluded: set[str] = field(default_factory=set)  # nodes that failed it
    # Nodes its attempt could not reach through the holder the snapshot named, by the registry stamp then:
    # not tried again until the registry changed (the node re-registered elsewhere, or went).
    unreachable: dict[str, Stamp] = field(default_factory=dict)
    recorded: bool = False  # the job exists in Redis
    answers_sent: int = 0  # the session's answers sent when it was submitted (recorded with a new job)
    submitted_at: float = 0.0
    queued_until: float = 0.0
    deadline: asyncio.TimerHandle | None = None  # of the running attempt: accept timeout, then job deadline

    @property
    def ended(self) -> bool:
        return self.phase is Phase.ENDED

    def avoided(self, stamp: Stamp) -> set[str]:
        """Nodes not to try for it now: those that failed it, and those it could not reach at this stamp."""
        if not self.unreachable:
            return self.excluded
        return self.excluded | {node for node, seen in self.unreachable.items() if seen == stamp}
