"""Node streams held by this scheduler instance: registration, heartbeats, leases, drain."""

from lingua_grpc.nodes._hub import Attached, HubSettings, NodeHub, lapsed
from lingua_grpc.nodes._link import (
    CloseReason,
    DrainCommand,
    LinkClosed,
    NodeLink,
    Outgoing,
    ReregisterCommand,
)

__all__ = [
    "Attached",
    "CloseReason",
    "DrainCommand",
    "HubSettings",
    "LinkClosed",
    "NodeHub",
    "NodeLink",
    "Outgoing",
    "ReregisterCommand",
    "lapsed",
]
