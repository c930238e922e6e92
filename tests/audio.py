"""Test audio: tones for speech, zeros for silence, 16-bit mono PCM."""

from __future__ import annotations

import io
import wave

import numpy as np


def tone(ms: int, rate: int = 16000, freq: float = 440.0, amplitude: int = 8000) -> bytes:
    t = np.arange(rate * ms // 1000) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype("<i2").tobytes()


def silence(ms: int, rate: int = 16000) -> bytes:
    return bytes(2 * (rate * ms // 1000))


def chunks(pcm: bytes, ms: int = 20, rate: int = 16000) -> list[bytes]:
    step = 2 * rate * ms // 1000
    return [pcm[i : i + step] for i in range(0, len(pcm), step)]


def wav_bytes(pcm: bytes, rate: int = 16000) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm)
    return out.getvalue()
