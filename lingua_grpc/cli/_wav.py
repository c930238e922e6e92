"""WAV files in and out: 16-bit mono PCM, and a demo file of tones separated by silence."""

from __future__ import annotations

import math
import struct
import wave
from pathlib import Path


class WavError(ValueError):
    pass


def read_pcm16_mono(path: str | Path) -> tuple[bytes, int]:
    """The PCM bytes and sample rate of a 16-bit mono WAV file."""
    try:
        with wave.open(str(path), "rb") as w:
            if w.getsampwidth() != 2 or w.getnchannels() != 1:
                raise WavError(
                    f"{path}: {w.getnchannels()} channel(s) of {8 * w.getsampwidth()}-bit audio; sessions take"
                    f" mono 16-bit PCM (convert with: sox {path} -c 1 -b 16 out.wav)"
                )
            return w.readframes(w.getnframes()), w.getframerate()
    except (wave.Error, EOFError) as exc:
        raise WavError(f"{path}: not a PCM WAV file ({exc})") from None


def write_pcm16_mono(path: str | Path, pcm: bytes, sample_rate_hz: int) -> None:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate_hz)
        w.writeframes(pcm)


def demo_pcm(sample_rate_hz: int = 16000, utterances: int = 3) -> bytes:
    """Tones standing in for speech, separated by a second of silence."""
    out = bytearray()
    for i in range(utterances):
        freq, ms = 330 + 110 * i, 700 + 200 * (i % 2)
        n = sample_rate_hz * ms // 1000
        out += struct.pack(
            f"<{n}h", *(int(9000 * math.sin(2 * math.pi * freq * k / sample_rate_hz)) for k in range(n))
        )
        out += bytes(2 * sample_rate_hz)
    return bytes(out)
