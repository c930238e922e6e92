"""Live sessions: segmentation, result ordering and the per-session actor."""

from lingua_grpc.sessions._options import BOUNDS, SAMPLE_RATES_HZ, SessionOptions
from lingua_grpc.sessions._ordering import Answer, ResultSequencer, SkipReason
from lingua_grpc.sessions._segmentation import Deadline, EndReason, Segmenter, SegmenterConfig, Utterance

__all__ = [
    "BOUNDS",
    "SAMPLE_RATES_HZ",
    "Answer",
    "Deadline",
    "EndReason",
    "ResultSequencer",
    "Segmenter",
    "SegmenterConfig",
    "SessionOptions",
    "SkipReason",
    "Utterance",
]
