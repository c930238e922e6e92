"""Engines a node agent can run. `create_engine` picks one by name."""

from __future__ import annotations

from node_agent.engines.base import Audio, Engine
from node_agent.engines.synthetic import SyntheticEngine

ENGINES = ("synthetic",)


def create_engine(name: str, latency_ms: int = 0) -> Engine:
    if name == "synthetic":
        s = latency_ms / 1000
        return SyntheticEngine(asr_latency_s=s, mt_latency_s=s, tts_latency_s=s)
    raise ValueError(f"unknown engine {name!r}; choose from {', '.join(ENGINES)}")


__all__ = ["ENGINES", "Audio", "Engine", "SyntheticEngine", "create_engine"]
