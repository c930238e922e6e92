"""Live sessions: segmentation, result ordering and the per-session actor."""

from lingua_grpc.jobs import SkipReason
from lingua_grpc.sessions._actor import (
    Closed,
    Output,
    ProgressOut,
    RecordedOut,
    ResultOut,
    SessionActor,
    SessionLimits,
    SkippedOut,
    Start,
    output_bytes,
)
from lingua_grpc.sessions._manager import Resumability, SessionFleet, SessionManager, StartRequest
from lingua_grpc.sessions._options import BOUNDS, SAMPLE_RATES_HZ, SessionOptions
from lingua_grpc.sessions._ordering import Answer, ResultSequencer
from lingua_grpc.sessions._records import SessionState, SessionStore, fleet_resume_key
from lingua_grpc.sessions._segmentation import Deadline, EndReason, Segmenter, SegmenterConfig, Utterance
from lingua_grpc.sessions._token import ResumeTokens

__all__ = [
    "BOUNDS",
    "SAMPLE_RATES_HZ",
    "Answer",
    "Closed",
    "Deadline",
    "EndReason",
    "Output",
    "ProgressOut",
    "RecordedOut",
    "ResultOut",
    "ResultSequencer",
    "Resumability",
    "ResumeTokens",
    "Segmenter",
    "SegmenterConfig",
    "SessionActor",
    "SessionFleet",
    "SessionLimits",
    "SessionManager",
    "SessionOptions",
    "SessionState",
    "SessionStore",
    "SkipReason",
    "SkippedOut",
    "Start",
    "StartRequest",
    "Utterance",
    "fleet_resume_key",
    "output_bytes",
]
