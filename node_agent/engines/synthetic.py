"""The synthetic engine: deterministic stand-in output with a configurable latency, for tests and
benchmarks. It does no speech processing and says so in every string it returns."""

from __future__ import annotations

import asyncio
import math
import zlib

import numpy as np

from node_agent.engines.base import Audio

TTS_SAMPLE_RATE_HZ = 16000


def _rms_dbfs(pcm: bytes) -> float:
    samples = np.frombuffer(pcm[: len(pcm) - len(pcm) % 2], dtype="<i2").astype(np.float64)
    if not samples.size:
        return -120.0
    rms = math.sqrt(float(np.mean(samples * samples)))
    return 20 * math.log10(rms / 32768) if rms > 0 else -120.0


class SyntheticEngine:
    """Same input, same output; each stage takes `*_latency_s` (0 by default). Any language, any pair: it is
    an engine for every stage (Recognizer, Translator and Synthesizer at once)."""

    name = "synthetic"

    def languages(self) -> None:
        return None

    def pairs(self) -> None:
        return None

    def __init__(
        self, asr_latency_s: float = 0.0, mt_latency_s: float = 0.0, tts_latency_s: float = 0.0
    ) -> None:
        self._asr_latency_s = asr_latency_s
        self._mt_latency_s = mt_latency_s
        self._tts_latency_s = tts_latency_s

    async def transcribe(self, audio: Audio, language: str) -> str:
        await self._spend(self._asr_latency_s)
        return (
            f"[synthetic {language}] utterance of {audio.duration_ms} ms,"
            f" level {_rms_dbfs(audio.data):.0f} dBFS, crc {zlib.crc32(audio.data):08x}"
        )

    async def translate(self, text: str, source_language: str, target_language: str) -> str:
        await self._spend(self._mt_latency_s)
        return f"[synthetic {source_language}>{target_language}] {text}"

    async def synthesize(self, text: str, language: str) -> Audio:
        await self._spend(self._tts_latency_s)
        # A tone whose pitch and length follow the text: 20 ms per character, at most 3 s.
        frames = min(TTS_SAMPLE_RATE_HZ * 3, TTS_SAMPLE_RATE_HZ * len(text) // 50)
        freq = 220 + zlib.crc32(text.encode()) % 440
        step = 2 * math.pi * freq / TTS_SAMPLE_RATE_HZ
        # numpy, not a Python loop: a node running 64 jobs at once must not spend its loop on stand-in tones
        pcm = (8000 * np.sin(step * np.arange(frames))).astype("<i2").tobytes()
        return Audio(pcm, TTS_SAMPLE_RATE_HZ)

    @staticmethod
    async def _spend(seconds: float) -> None:
        if seconds > 0:
            await asyncio.sleep(seconds)  # stands in for model time
