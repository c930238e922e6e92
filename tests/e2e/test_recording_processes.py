"""A recording streamed by `lingua-client stream` as fast as the file reads (its default), through real
scheduler and node agent processes: the session's window holds the client back, so no utterance is lost to
its speed (issue 24: 62 of 120 were skipped SESSION_BACKLOG)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pty
import subprocess
from pathlib import Path

import pytest

from tests.audio import silence, tone, wav_bytes
from tests.e2e._procs import BIN, Proc, SchedulerProc, start_node, start_scheduler

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


def recording(utterances: int) -> bytes:
    """Short utterances: 300 ms of tone, then 900 ms of silence (a pause is 600 + 200 ms by default)."""
    return wav_bytes(b"".join(tone(300, freq=300 + 5 * i) + silence(900) for i in range(utterances)))


async def fleet(tmp: Path) -> tuple[SchedulerProc, Proc]:
    """A scheduler with its default settings (window of 32 utterances a session) and one node of two slots
    whose every stage takes 20 ms: about 30 utterances a second, far slower than a file reads."""
    scheduler = await start_scheduler(tmp)
    node = start_node(
        tmp, scheduler.grpc, "gpu-1", "--max-concurrency", "2", "--synthetic-latency-ms", "20", pairs="en-es"
    )
    await node.log_contains("registered")
    return scheduler, node


def stream_args(scheduler: SchedulerProc, wav: Path) -> list[str]:
    return [str(BIN / "lingua-client"), "--scheduler", scheduler.grpc, "stream", str(wav), "--src", "en"]


async def test_a_recording_of_120_utterances_streamed_flat_out_gets_120_results(tmp_path: Path) -> None:
    scheduler, node = await fleet(tmp_path)
    try:
        wav = tmp_path / "talk.wav"
        wav.write_bytes(recording(120))
        proc = await asyncio.create_subprocess_exec(
            *stream_args(scheduler, wav),
            "--tgt",
            "es",
            "--json",
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 90)
        assert proc.returncode == 0, err.decode()
        messages = [json.loads(line) for line in out.decode().splitlines()]
        assert messages[0]["started"]["maxOutstandingUtterances"] == 32
        skipped = [m["skipped"] for m in messages if "skipped" in m]
        assert skipped == [], f"{len(skipped)} skipped, first {skipped[:1]}"
        results = [m["result"] for m in messages if "result" in m]
        assert [r["utteranceIndex"] for r in results] == list(range(120))
        assert all(1000 <= r["audioDurationMs"] <= 1300 for r in results), "each utterance whole"
        assert "120 utterances: 120 results, 0 skipped" in err.decode()
        assert await scheduler.metric("lingua_skips_total", reason="session_backlog") == 0
    finally:
        node.kill()
        scheduler.kill()


async def test_the_progress_bar_is_drawn_on_a_terminal_and_json_output_stays_clean(tmp_path: Path) -> None:
    scheduler, node = await fleet(tmp_path)
    master, tty = pty.openpty()
    drawn = bytearray()
    loop = asyncio.get_running_loop()
    loop.add_reader(master, lambda: drawn.extend(os.read(master, 65536)))
    try:
        wav = tmp_path / "talk.wav"
        wav.write_bytes(recording(40))
        proc = await asyncio.create_subprocess_exec(
            *stream_args(scheduler, wav), "--tgt", "es", "--json", stdout=subprocess.PIPE, stderr=tty
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 90)
        assert proc.returncode == 0
        lines = out.decode().splitlines()
        assert sum("result" in json.loads(line) for line in lines) == 40, "stdout: JSON lines only"
        loop.remove_reader(master)
        os.set_blocking(master, False)
        with contextlib.suppress(BlockingIOError, OSError):
            while chunk := os.read(master, 65536):  # what the terminal still holds
                drawn.extend(chunk)
        screen = drawn.decode(errors="replace")
        assert "% sent," in screen and "outstanding" in screen, screen[-500:]
        assert "40 utterances: 40 results, 0 skipped" in screen
    finally:
        loop.remove_reader(master)
        os.close(master)
        os.close(tty)
        node.kill()
        scheduler.kill()
