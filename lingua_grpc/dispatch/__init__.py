"""Dispatch: candidate selection over one snapshot, slot reservation and the job's life on a node."""

from lingua_grpc.dispatch._dispatcher import (
    Dispatcher,
    DispatchSettings,
    JobSink,
    JobTransport,
    Overhead,
    Ticket,
)
from lingua_grpc.dispatch._selection import Request, rank_candidates

__all__ = [
    "DispatchSettings",
    "Dispatcher",
    "JobSink",
    "JobTransport",
    "Overhead",
    "Request",
    "Ticket",
    "rank_candidates",
]
