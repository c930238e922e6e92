"""Dispatch: candidate selection over one snapshot, slot reservation and the job's life on a node."""

from lingua_grpc.dispatch._dispatcher import Dispatcher, DispatchSettings, skip_reason_for
from lingua_grpc.dispatch._placement import VIA, JobTransport
from lingua_grpc.dispatch._selection import Request, rank_candidates
from lingua_grpc.dispatch._ticket import Attempt, JobSink, Overhead, Phase, Ticket

__all__ = [
    "VIA",
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
    "skip_reason_for",
]
