"""A WAV file streamed by `lingua-client` through a real scheduler process to a real node agent process."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import pytest

from tests.audio import silence, tone, wav_bytes
from tests.e2e._procs import BIN, start_node, start_scheduler

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]


async def run_client(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        str(BIN / "lingua-client"), *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_wav_streamed_through_processes_comes_back_translated_in_order(tmp_path: Path) -> None:
    scheduler = await start_scheduler(tmp_path)
    node = start_node(tmp_path, scheduler.grpc, "gpu-e2e", pairs="en-es")
    try:
        await node.log_contains("registered")
        wav = tmp_path / "talk.wav"
        wav.write_bytes(
            wav_bytes(b"".join(tone(500 + 100 * i, freq=300 + 90 * i) + silence(1200) for i in range(4)))
        )
        code, out, err = await run_client(
            "--scheduler",
            scheduler.grpc,
            "stream",
            str(wav),
            "--src",
            "en",
            "--tgt",
            "es",
            "--json",
            "--tts-out",
            str(tmp_path / "tts"),
        )
        assert code == 0, err
        messages = [json.loads(line) for line in out.splitlines()]
        assert "started" in messages[0]
        results = [m["result"] for m in messages if "result" in m]
        assert [r["utteranceIndex"] for r in results] == [0, 1, 2, 3]
        assert all(
            r["nodeId"] == "gpu-e2e" and r["translatedText"].startswith("[synthetic en>es]") for r in results
        )
        about_utterances = [m for m in messages if "audioRecorded" not in m]
        first_result = next(i for i, m in enumerate(about_utterances) if "result" in m)
        assert "progress" in about_utterances[first_result - 1], "progress comes before its result"
        assert any("audioRecorded" in m for m in messages), "the client hears how far its audio is recorded"

        code, out, err = await run_client(
            "--scheduler",
            scheduler.grpc,
            "stream",
            str(wav),
            "--src",
            "en",
            "--tgt",
            "es",
            "--tts-out",
            str(tmp_path / "tts"),
        )
        assert code == 0, err
        assert out.count("-> [synthetic en>es]") == 4
        assert sorted(p.name for p in (tmp_path / "tts").iterdir()) == [
            f"utterance-000{i}.wav" for i in range(4)
        ]
    finally:
        node.kill()
        scheduler.kill()


async def test_client_reports_a_pair_nobody_serves(tmp_path: Path) -> None:
    scheduler = await start_scheduler(tmp_path)
    try:
        wav = tmp_path / "talk.wav"
        wav.write_bytes(wav_bytes(tone(500)))
        code, _, err = await run_client(
            "--scheduler", scheduler.grpc, "stream", str(wav), "--src", "en", "--tgt", "fr"
        )
        assert code == 1
        assert "UNAVAILABLE: no registered node serves en-fr" in err
    finally:
        scheduler.kill()


async def test_client_passes_over_a_dead_address_and_shows_the_session_and_its_jobs(tmp_path: Path) -> None:
    """`--scheduler DEAD,LIVE`: the stream and the registry commands go to the address that answers; an
    operator reads the session and a job from the store (no user content in them)."""
    from tests.conftest import free_port

    scheduler = await start_scheduler(tmp_path)
    node = start_node(tmp_path, scheduler.grpc, "gpu-e2e", pairs="en-es")
    addresses = f"127.0.0.1:{free_port()},{scheduler.grpc}"
    try:
        await node.log_contains("registered")
        wav = tmp_path / "talk.wav"
        wav.write_bytes(wav_bytes(b"".join(tone(500, freq=300 + 90 * i) + silence(1200) for i in range(2))))
        code, out, err = await run_client(
            "--scheduler", addresses, "stream", str(wav), "--src", "en", "--tgt", "es", "--json"
        )
        assert code == 0, err
        messages = [json.loads(line) for line in out.splitlines()]
        session_id = messages[0]["started"]["sessionId"]
        assert messages[0]["started"]["resumeToken"].startswith("v1.")
        code, out, err = await run_client("--scheduler", addresses, "session", session_id)
        assert code == 0, err
        shown = json.loads(out)
        assert shown["session"]["ended"] is True, "ended for good at end_of_stream"
        assert shown["session"]["nextUtteranceIndex"] == 2 and shown["session"]["answersSent"] == 2
        assert [j["state"] for j in shown["jobs"]] == ["JOB_STATE_COMPLETED"] * 2
        assert "Text" not in out and 'audio"' not in out, "no transcript, translation or audio"
        code, out, err = await run_client("--scheduler", addresses, "job", f"{session_id}:1")
        assert code == 0, err
        job = json.loads(out)["job"]
        assert (job["nodeId"], job["attempt"], job["state"]) == ("gpu-e2e", 1, "JOB_STATE_COMPLETED")
        code, _, err = await run_client("--scheduler", addresses, "job", f"{session_id}:7")
        assert code == 1 and "NOT_FOUND" in err
    finally:
        node.kill()
        scheduler.kill()
