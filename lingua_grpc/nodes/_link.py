"""NodeLink: the scheduler's end of one node's stream, as the domain sees it."""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass

from lingua_grpc.errors import LinguaError
from lingua_grpc.jobs import Assignment
from lingua_grpc.registry import NodeCapabilities


@dataclass(frozen=True, slots=True)
class DrainCommand:
    reason: str


@dataclass(frozen=True, slots=True)
class ReregisterCommand:
    reason: str


@dataclass(frozen=True, slots=True)
class CancelCommand:
    job_id: str
    attempt: int
    reason: str


Outgoing = DrainCommand | ReregisterCommand | CancelCommand | Assignment


class CloseReason(enum.Enum):
    LEFT = "left"  # the node half-closed its stream
    STREAM_BROKEN = "stream_broken"  # the stream failed or was cancelled (node died, network)
    LEASE_EXPIRED = "lease_expired"  # no heartbeat for a whole lease
    SUPERSEDED = "superseded"  # the node registered again on a newer stream
    REREGISTER = "reregister"  # the registry lost the node: it must register again
    PROTOCOL = "protocol"  # the node broke the protocol
    SHUTDOWN = "shutdown"  # this scheduler is stopping
    REVOKED = "revoked"  # the node's credential was revoked


class LinkClosed(Exception):
    def __init__(self, reason: CloseReason, error: LinguaError | None) -> None:
        super().__init__(reason.value)
        self.reason = reason
        self.error = error


@dataclass(frozen=True, slots=True)
class _Close:
    reason: CloseReason
    error: LinguaError | None


class NodeLink:
    """Messages to one node go through `send`; the stream's writer takes them with `next_outgoing`."""

    def __init__(self, node_id: str, connection_id: str, capabilities: NodeCapabilities, now: float) -> None:
        self.node_id = node_id
        self.connection_id = connection_id
        self.capabilities = capabilities
        self.last_heartbeat = now  # monotonic time the node was last heard from (any message)
        # Messages of the node being applied now (waiting on Redis, maybe): while one is, the stream's reader
        # is ours to blame for not reading its heartbeats, so its lease does not run out.
        self.handling = 0
        self.heartbeat_recording = False  # a heartbeat's Redis write is in flight
        self.drain_sent = False
        self.close_reason: CloseReason | None = None
        # Unbounded on purpose: what goes in is bounded by the node's job slots plus a few control messages.
        self._outbox: asyncio.Queue[Outgoing | _Close] = asyncio.Queue()

    @property
    def closed(self) -> bool:
        return self.close_reason is not None

    def send(self, message: Outgoing) -> bool:
        if self.closed:
            return False
        self._outbox.put_nowait(message)
        return True

    def close(self, reason: CloseReason, error: LinguaError | None = None) -> None:
        """Ends the stream after what was already sent; the first reason given wins."""
        if self.close_reason is None:
            self.close_reason = reason
            self._outbox.put_nowait(_Close(reason, error))

    async def next_outgoing(self) -> Outgoing:
        item = await self._outbox.get()
        if isinstance(item, _Close):
            raise LinkClosed(item.reason, item.error)
        return item
