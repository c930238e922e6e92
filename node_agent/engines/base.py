"""The Engine interface: what a node needs from its models."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Audio:
    """16-bit little-endian PCM."""

    data: bytes
    sample_rate_hz: int
    channels: int = 1

    @property
    def duration_ms(self) -> int:
        frames = len(self.data) // (2 * self.channels)
        return frames * 1000 // self.sample_rate_hz if self.sample_rate_hz else 0


class Engine(Protocol):
    """Speech recognition, translation and speech synthesis. Implementations may block only in threads."""

    name: str

    async def transcribe(self, audio: Audio, language: str) -> str: ...

    async def translate(self, text: str, source_language: str, target_language: str) -> str: ...

    async def synthesize(self, text: str, language: str) -> Audio: ...
