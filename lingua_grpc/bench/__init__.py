"""`lingua-bench`: load, overhead and baselines, measured in one run on one machine."""

from lingua_grpc.bench._main import main

__all__ = ["main"]
