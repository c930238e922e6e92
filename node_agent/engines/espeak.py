"""TTS with espeak-ng (Debian's `espeak-ng`, GPL-3.0; ~1 MB; over a hundred languages, formant voices:
intelligible, robotic, fast on any CPU)."""

from __future__ import annotations

import io
import re
import shutil
import subprocess
import wave

import langcodes

from lingua_grpc.registry import canonical_language
from node_agent.engines._process import run_tool
from node_agent.engines.base import Audio


def espeak_voices(binary: str) -> dict[str, str]:
    """BCP-47 tag -> the espeak-ng voice that speaks it best, from `espeak-ng --voices`: each voice's own
    language, and the others it lists with a priority ("(en 2)": the en-gb voice is a good `en`)."""
    listing = subprocess.run([binary, "--voices"], capture_output=True, text=True, check=True).stdout
    best: dict[str, tuple[int, str]] = {}
    for line in listing.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 2 or not fields[0].isdigit():
            continue
        voice = fields[1]
        spoken = [(voice, int(fields[0]))]
        spoken += [(name, int(prio)) for name, prio in re.findall(r"\((\S+) (\d+)\)", line)]
        for name, priority in spoken:
            try:
                tag = canonical_language(langcodes.standardize_tag(name, macro=True))
            except ValueError:
                continue
            if tag not in best or priority < best[tag][0]:
                best[tag] = (priority, voice)
    return {tag: voice for tag, (_, voice) in best.items()}


class EspeakSynthesizer:
    name = "espeak-ng"

    def __init__(self, binary: str = "espeak-ng", voices: dict[str, str] | None = None) -> None:
        """`voices`: language tag -> espeak-ng voice, over the default voice of each language."""
        path = shutil.which(binary)
        if path is None:
            raise ValueError(f"--tts espeak-ng needs the `{binary}` program: install Debian's espeak-ng")
        self._binary = path
        self._voices = espeak_voices(path)
        for tag, voice in (voices or {}).items():
            self._voices[canonical_language(tag)] = voice

    def languages(self) -> frozenset[str]:
        return frozenset(self._voices)

    def _voice(self, language: str) -> str:
        tag = canonical_language(language)
        voice = self._voices.get(tag) or self._voices.get(tag.split("-")[0])
        if voice is None:
            raise ValueError(f"espeak-ng has no voice for {language}")
        return voice

    async def synthesize(self, text: str, language: str) -> Audio:
        wav = await run_tool(self._binary, "-v", self._voice(language), "--stdout", stdin=text.encode())
        with wave.open(io.BytesIO(wav)) as w:  # espeak-ng streams: its header's frame count is a placeholder
            rate, width, channels = w.getframerate(), w.getsampwidth(), w.getnchannels()
            pcm = wav[len(wav) - _data_bytes(wav) :]
        if width != 2:
            raise ValueError(f"espeak-ng wrote {8 * width}-bit audio; 16-bit expected")
        return Audio(pcm, rate, channels)


def _data_bytes(wav: bytes) -> int:
    """Bytes of PCM after the `data` chunk's header (to the end: the streamed header's size is not real)."""
    at = wav.find(b"data", 12)
    if at < 0:
        raise ValueError("espeak-ng wrote no WAV data chunk")
    return len(wav) - (at + 8)
