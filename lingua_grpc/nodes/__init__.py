"""Node streams held by this scheduler instance: registration, heartbeats, leases, drain."""

from lingua_grpc.nodes._hub import Attached, HubSettings, JobListener, NodeHub, lapsed
from lingua_grpc.nodes._link import (
    CancelCommand,
    CloseReason,
    DrainCommand,
    LinkClosed,
    NodeLink,
    Outgoing,
    ReregisterCommand,
)
from lingua_grpc.nodes._links import NodeLinks

__all__ = [
    "Attached",
    "CancelCommand",
    "CloseReason",
    "DrainCommand",
    "HubSettings",
    "JobListener",
    "LinkClosed",
    "NodeHub",
    "NodeLink",
    "NodeLinks",
    "Outgoing",
    "ReregisterCommand",
    "lapsed",
]
