"""WAV files in and out: 16-bit mono PCM, and the demo: English sentences spoken by espeak-ng (or, without
it, tones standing in for speech), separated by silence."""

from __future__ import annotations

import io
import math
import shutil
import struct
import subprocess
import wave
from pathlib import Path

DEMO_SENTENCES = (
    "Good morning everyone, thank you for coming to the meeting.",
    "This is a test of the translation service.",
    "The weather is very nice today.",
)


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


def spoken_demo(sentences: tuple[str, ...] = DEMO_SENTENCES) -> tuple[bytes, int] | None:
    """English sentences spoken by espeak-ng, each followed by a second of silence: (PCM, rate). None when
    espeak-ng is not installed."""
    binary = shutil.which("espeak-ng")
    if binary is None:
        return None
    out, rate = bytearray(), 22050
    for sentence in sentences:
        wav = subprocess.run(
            [binary, "-v", "en-us", "-s", "130", "--stdout", sentence], capture_output=True, check=True
        ).stdout
        with wave.open(io.BytesIO(wav)) as w:
            rate = w.getframerate()
        out += wav[wav.find(b"data", 12) + 8 :]  # (espeak-ng streams: its header's length is a placeholder)
        out += bytes(2 * rate)
    return bytes(out), rate
