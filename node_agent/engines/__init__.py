"""Engines a node agent runs, one per stage: `build_pipeline` picks each by name."""

from __future__ import annotations

from dataclasses import dataclass, field

from node_agent.engines.base import Audio, Engine, Pipeline, Recognizer, Synthesizer, Translator
from node_agent.engines.synthetic import SyntheticEngine

ASR_ENGINES = ("synthetic", "faster-whisper")
MT_ENGINES = ("synthetic", "apertium")
TTS_ENGINES = ("synthetic", "espeak-ng")
ENGINES = ("synthetic",)  # `--engine`: the same engine for every stage


@dataclass(frozen=True, slots=True)
class EngineOptions:
    synthetic_latency_ms: int = 0
    tts_voices: dict[str, str] = field(default_factory=dict)  # language -> voice of the TTS engine
    asr_model: str = "tiny.en"  # faster-whisper: a CTranslate2 Whisper directory, or the bundled tiny.en
    asr_device: str = "auto"
    asr_compute_type: str = "auto"
    workers: int = 1  # jobs the node runs at once: model calls in parallel
    gpus: int = 0  # GPUs NVML found


def build_pipeline(asr: str, mt: str, tts: str, options: EngineOptions | None = None) -> Pipeline:
    """The engines named for each stage. ValueError names an unknown engine or what an engine lacks (a
    program, a package)."""
    options = options or EngineOptions()
    s = options.synthetic_latency_ms / 1000
    synthetic = SyntheticEngine(asr_latency_s=s, mt_latency_s=s, tts_latency_s=s)
    recognizer: Recognizer
    translator: Translator
    synthesizer: Synthesizer
    if asr == "synthetic":
        recognizer = synthetic
    elif asr == "faster-whisper":
        from node_agent.engines.whisper import FasterWhisperRecognizer, WhisperOptions

        recognizer = FasterWhisperRecognizer(
            WhisperOptions(
                options.asr_model,
                options.asr_device,
                options.asr_compute_type,
                options.workers,
                options.gpus,
            )
        )
    else:
        raise ValueError(f"unknown ASR engine {asr!r}; choose from {', '.join(ASR_ENGINES)}")
    if mt == "synthetic":
        translator = synthetic
    elif mt == "apertium":
        from node_agent.engines.apertium import ApertiumTranslator

        translator = ApertiumTranslator()
    else:
        raise ValueError(f"unknown translation engine {mt!r}; choose from {', '.join(MT_ENGINES)}")
    if tts == "synthetic":
        synthesizer = synthetic
    elif tts == "espeak-ng":
        from node_agent.engines.espeak import EspeakSynthesizer

        synthesizer = EspeakSynthesizer(voices=options.tts_voices)
    else:
        raise ValueError(f"unknown TTS engine {tts!r}; choose from {', '.join(TTS_ENGINES)}")
    return Pipeline(recognizer, translator, synthesizer)


def create_engine(name: str, latency_ms: int = 0) -> Engine:
    """`--engine NAME`: the same engine for every stage."""
    if name not in ENGINES:
        raise ValueError(f"unknown engine {name!r}; choose from {', '.join(ENGINES)}")
    return build_pipeline(name, name, name, EngineOptions(synthetic_latency_ms=latency_ms))


__all__ = [
    "ASR_ENGINES",
    "ENGINES",
    "MT_ENGINES",
    "TTS_ENGINES",
    "Audio",
    "Engine",
    "EngineOptions",
    "Pipeline",
    "Recognizer",
    "Synthesizer",
    "SyntheticEngine",
    "Translator",
    "build_pipeline",
    "create_engine",
]
