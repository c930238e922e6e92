"""Dispatch: candidate selection over one snapshot, slot reservation and the job's life on a node."""

from lingua_grpc.dispatch._dispatcher import Dispatcher, DispatchSettings
from lingua_grpc.dispatch._placement import JobTransport
from lingua_grpc.dispatch._selection import Request, rank_candidates
from lingua_grpc.dispatch._ticket import Attempt, JobSink, Overhead, Phase, Ticket

__all__ = [
    "Attempt",
    "DispatchSettings",
    "Dispatcher",
    "JobSink",
    "JobTransport",
    "Overhead",
    "Phase",
    "Request",
    "Ticket",
    "rank_candidates",
]
