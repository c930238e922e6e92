"""What a node needs from its models: one engine per stage (ASR, translation, TTS), composed into the
`Engine` the agent runs jobs through."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from lingua_grpc.registry import LanguagePair


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


class Recognizer(Protocol):
    """Speech to text. `languages`: BCP-47 tags it transcribes; None for any."""

    name: str

    def languages(self) -> frozenset[str] | None: ...

    async def transcribe(self, audio: Audio, language: str) -> str: ...


class Translator(Protocol):
    """Text to text. `pairs`: the pairs it translates; None for any."""

    name: str

    def pairs(self) -> frozenset[LanguagePair] | None: ...

    async def translate(self, text: str, source_language: str, target_language: str) -> str: ...


class Synthesizer(Protocol):
    """Text to speech. `languages`: BCP-47 tags it has voices for; None for any."""

    name: str

    def languages(self) -> frozenset[str] | None: ...

    async def synthesize(self, text: str, language: str) -> Audio: ...


def _serves(languages: frozenset[str] | None, tag: str) -> bool:
    """A tag is served by its exact voice/model or by one of its primary language ("es-MX" by "es")."""
    if languages is None:
        return True
    return tag in languages or tag.split("-")[0] in languages


class Pipeline:
    """An Engine made of one engine per stage."""

    def __init__(self, asr: Recognizer, mt: Translator, tts: Synthesizer) -> None:
        self.asr, self.mt, self.tts = asr, mt, tts
        self.name = f"asr={asr.name} mt={mt.name} tts={tts.name}"

    async def transcribe(self, audio: Audio, language: str) -> str:
        return await self.asr.transcribe(audio, language)

    async def translate(self, text: str, source_language: str, target_language: str) -> str:
        return await self.mt.translate(text, source_language, target_language)

    async def synthesize(self, text: str, language: str) -> Audio:
        return await self.tts.synthesize(text, language)

    def servable(self) -> frozenset[LanguagePair] | None:
        """Every pair the stages serve together (ASR of the source, translation; TTS apart: see
        `tts_languages`); None when every stage takes anything (synthetic)."""
        pairs = self.mt.pairs()
        if pairs is None:
            return None
        return frozenset(p for p in pairs if _serves(self.asr.languages(), p.source))

    def missing(self, pair: LanguagePair) -> list[str]:
        """What the stages lack to serve `pair` (with speech): empty when they serve it."""
        out = []
        if not _serves(self.asr.languages(), pair.source):
            out.append(f"ASR ({self.asr.name}) has no model for {pair.source}")
        mt_pairs = self.mt.pairs()
        if mt_pairs is not None and pair not in mt_pairs:
            out.append(f"translation ({self.mt.name}) has no {pair} pair")
        if not _serves(self.tts.languages(), pair.target):
            out.append(f"TTS ({self.tts.name}) has no voice for {pair.target}")
        return out

    def tts_languages(self, targets: Iterable[str]) -> list[str]:
        """Of `targets`, those the TTS engine speaks."""
        return sorted({t for t in targets if _serves(self.tts.languages(), t)})
