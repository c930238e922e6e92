"""Live sessions: segmentation, result ordering and the per-session actor."""

from lingua_grpc.jobs import SkipReason
from lingua_grpc.sessions._actor import (
    Closed,
    Output,
    ProgressOut,
    ResultOut,
    SessionActor,
    SessionLimits,
    SkippedOut,
    output_bytes,
)
from lingua_grpc.sessions._manager import SessionManager, StartRequest
from lingua_grpc.sessions._options import BOUNDS, SAMPLE_RATES_HZ, SessionOptions
from lingua_grpc.sessions._ordering import Answer, ResultSequencer
from lingua_grpc.sessions._segmentation import Deadline, EndReason, Segmenter, SegmenterConfig, Utterance

__all__ = [
    "BOUNDS",
    "SAMPLE_RATES_HZ",
    "Answer",
    "Closed",
    "Deadline",
    "EndReason",
    "Output",
    "ProgressOut",
    "ResultOut",
    "ResultSequencer",
    "Segmenter",
    "SegmenterConfig",
    "SessionActor",
    "SessionLimits",
    "SessionManager",
    "SessionOptions",
    "SkipReason",
    "SkippedOut",
    "StartRequest",
    "Utterance",
    "output_bytes",
]
