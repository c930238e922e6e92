"""The reference node's real engines (Debian's espeak-ng and Apertium, installed by `make setup`), alone and
through real `lingua-scheduler` and `lingua-node` processes."""

from __future__ import annotations

import asyncio
import json
import math
import subprocess
from array import array
from pathlib import Path

import pytest

from lingua_grpc.client import LinguaClient, Reconnect
from lingua_grpc.registry import LanguagePair
from node_agent.engines.apertium import ApertiumTranslator
from node_agent.engines.base import Audio
from node_agent.engines.espeak import EspeakSynthesizer
from node_agent.engines.whisper import FasterWhisperRecognizer, WhisperOptions
from tests.audio import chunks, silence, tone
from tests.e2e._procs import BIN, start_node, start_scheduler

pytestmark = [pytest.mark.engines, pytest.mark.timeout(120)]


SENTENCE = "hello world. this is a test of the translation service."


def spoken(text: str, voice: str = "en-us") -> Audio:
    """English speech made with espeak-ng, at 22,050 Hz."""
    wav = subprocess.run(
        ["espeak-ng", "-v", voice, "-s", "130", "--stdout", text], capture_output=True, check=True
    ).stdout
    at = wav.find(b"data", 12)
    return Audio(wav[at + 8 :], 22050)


@pytest.fixture(scope="session")
def whisper() -> FasterWhisperRecognizer:
    """The bundled tiny.en model, loaded (and warmed up) once for the test session."""
    return FasterWhisperRecognizer(WhisperOptions(workers=2))


async def test_whisper_transcribes_english_speech_into_its_words(whisper: FasterWhisperRecognizer) -> None:
    assert whisper.languages() == {"en"} and whisper.device == "cpu" and whisper.compute_type == "int8"
    text = (await whisper.transcribe(spoken(SENTENCE), "en")).lower()
    for word in ("world", "test", "translation", "service"):
        assert word in text, text


def rms_dbfs(pcm: bytes) -> float:
    samples = array("h")
    samples.frombytes(pcm)
    rms = math.sqrt(sum(s * s for s in samples) / max(len(samples), 1))
    return 20 * math.log10(rms / 32768) if rms else -120.0


def children() -> set[int]:
    """This process's child processes, now."""
    out: set[int] = set()
    for task in Path("/proc/self/task").iterdir():
        text = (task / "children").read_text().split()
        out |= {int(pid) for pid in text}
    return out


async def test_apertium_translates_hello_world_into_spanish() -> None:
    mt = ApertiumTranslator()
    assert LanguagePair("en", "es") in mt.pairs() and LanguagePair("es", "en") in mt.pairs()
    text = (await mt.translate("hello world", "en", "es")).lower()
    assert "hola" in text and "mundo" in text, text


async def test_espeak_speaks_audibly_at_the_rate_it_declares() -> None:
    tts = EspeakSynthesizer()
    assert {"en", "es", "fr", "en-US"} <= tts.languages()
    speech = await tts.synthesize("hola mundo, buenos días", "es")
    assert speech.sample_rate_hz == 22050 and speech.channels == 1
    assert 800 < speech.duration_ms < 5000, speech.duration_ms
    assert rms_dbfs(speech.data) > -30, "speech, not silence"


async def test_a_cancelled_synthesis_ends_its_process_at_once() -> None:
    tts = EspeakSynthesizer()
    before = children()
    job = asyncio.create_task(tts.synthesize("una frase muy larga. " * 3000, "es"))

    async def running() -> bool:
        return bool(children() - before)

    from tests.conftest import wait_until

    await wait_until(running, what="espeak-ng started")
    job.cancel()
    with pytest.raises(asyncio.CancelledError):
        await job
    assert not children() - before, "the engine's process was killed with the job"


def test_a_pair_the_engines_cannot_serve_is_refused_at_start_naming_what_is_missing() -> None:
    done = subprocess.run(
        [str(BIN / "lingua-node"), "--mt", "apertium", "--tts", "espeak-ng", "--pairs", "en-es,en-xx"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "cannot serve en-xx: translation (apertium) has no en-xx pair" in done.stderr
    assert "TTS (espeak-ng) has no voice for xx" in done.stderr


async def test_a_session_through_real_processes_gets_spanish_text_and_speech(tmp_path: Path) -> None:
    """ASR stays synthetic here (its text, English words and numbers, goes through Apertium)."""
    scheduler = await start_scheduler(tmp_path)
    node = start_node(
        tmp_path, scheduler.grpc, "cpu-real", "--mt", "apertium", "--tts", "espeak-ng", pairs="en-es"
    )
    try:
        await node.log_contains("registered")
        async with LinguaClient(scheduler.grpc, reconnect=Reconnect(within_s=0)) as client:
            session = await client.start_session("en", "es")
            for chunk in chunks(tone(600) + silence(1000), 100):
                await session.send_audio(chunk)
            await session.end()
            results = [m.result async for m in session if m.HasField("result")]
        (result,) = results
        assert result.source_text.startswith("[synthetic en] utterance of 1")
        assert "utterance" not in result.translated_text.lower(), "translated, not echoed"
        assert "de" in result.translated_text.split(), result.translated_text  # "utterance of" -> "... de"
        assert result.tts_audio_format.sample_rate_hz == 22050 and rms_dbfs(result.tts_audio) > -30
        # Each stage's time is measured (Apertium starts a pipeline of processes per call: never 0 ms).
        assert result.timings.translation_ms > 0 and result.timings.tts_ms > 0
    finally:
        node.kill()
        scheduler.kill()


async def test_spoken_english_becomes_spanish_text_and_speech_through_real_processes(tmp_path: Path) -> None:
    """Every stage real: faster-whisper (tiny.en), Apertium en>es, espeak-ng, in real scheduler and node
    processes; the client streams espeak-ng's English at its own pace."""
    scheduler = await start_scheduler(tmp_path)
    node = start_node(
        tmp_path,
        scheduler.grpc,
        "cpu-all-real",
        "--asr",
        "faster-whisper",
        "--mt",
        "apertium",
        "--tts",
        "espeak-ng",
        pairs="en-es",
    )
    try:
        await node.log_contains("registered", timeout_s=60)
        assert "ASR model ready" in node.log(), "loaded and warmed up before registering"
        speech = spoken(SENTENCE)
        async with LinguaClient(scheduler.grpc, reconnect=Reconnect(within_s=0)) as client:
            session = await client.start_session("en", "es", sample_rate_hz=speech.sample_rate_hz)
            step = speech.sample_rate_hz // 10 * 2
            for i in range(0, len(speech.data), step):
                await session.send_audio(speech.data[i : i + step])
            await session.end()
            messages = [m async for m in session]
        results = [m.result for m in messages if m.HasField("result")]
        assert len(results) == 1, [m.WhichOneof("kind") for m in messages]
        result = results[0]
        assert "translation service" in result.source_text.lower(), result.source_text
        spanish = result.translated_text.lower()
        assert "prueba" in spanish and "servicio de traducción" in spanish, (
            spanish
        )  # a test of the translation service
        progress = [m.progress.text for m in messages if m.HasField("progress")]
        assert progress[:2] == [result.source_text, result.translated_text], "progress carries the real text"
        assert result.tts_audio_format.sample_rate_hz == 22050 and rms_dbfs(result.tts_audio) > -30
        assert result.timings.asr_ms > 0
    finally:
        node.kill()
        scheduler.kill()


def test_the_bench_drives_real_engine_nodes_and_reports_each_stage_s_real_time_factor(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    done = subprocess.run(
        [
            str(BIN / "lingua-bench"),
            *("--real-engines", "--nodes", "1", "--node-concurrency", "1", "--sessions", "1"),
            *("--utterances", "2", "--idle-sessions", "0", "--skip-baselines", "--quiet", "--json", str(out)),
        ],
        capture_output=True,
        text=True,
        timeout=110,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    load = json.loads(out.read_text())["load"]
    assert load["utterances_completed"] == 2 and load["utterances_skipped"] == 0
    assert all(load[f"{stage}_rtf_p50"] > 0 for stage in ("asr", "mt", "tts")), load
