"""`lingua-bench` at tiny size, so the benchmark keeps working (figures come from `make bench`)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest

from lingua_grpc.pb import session_pb2, session_pb2_grpc

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

BIN = Path(sys.executable).parent


def run_bench(tmp_path: Path, *extra: str) -> tuple[str, dict[str, Any]]:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [
            str(BIN / "lingua-bench"),
            "--sessions",
            "2",
            "--utterances",
            "3",
            "--nodes",
            "1",
            "--reservations",
            "50",
            "--echo-messages-per-stream",
            "50",
            "--quiet",
            "--json",
            str(out),
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout, json.loads(out.read_text())


def test_ingest_run_reports_every_measure_beside_the_echo_baselines(tmp_path: Path) -> None:
    table, report = run_bench(tmp_path, "--idle-sessions", "10")
    assert "ingest_vs_echo" in table
    load = report["load"]
    assert load["utterances_completed"] == 6
    assert load["utterances_skipped"] == 0
    assert load["redis_round_trips_per_job"] == 3, "reserve+start, accepted, complete+release"
    for key in (
        "overhead_p50_ms",
        "overhead_p99_ms",
        "dispatch_p50_ms",
        "delivery_p50_ms",
        "loop_lag_p99_ms",
        "end_to_end_p99_ms",
        "chunks_per_s",
        "redis_commands_per_job",
        "scheduler_cpu_s_per_1000_jobs",
        "scheduler_cpu_wait_ms_per_s",
    ):
        assert key in load
    assert report["idle"]["open_sessions"] == 10
    assert set(report["baselines"]) == {"echo_messages_per_s", "echo_idle_stream_kib"}
    assert set(report["ratios"]) == {"ingest_vs_echo", "idle_session_rss_vs_echo_stream"}


def test_job_throughput_run_is_set_beside_the_bare_reservation_loop(tmp_path: Path) -> None:
    table, report = run_bench(tmp_path, "--whole-utterances", "--idle-sessions", "0")
    assert report["load"]["utterances_completed"] == 6
    assert set(report["baselines"]) == {"reservations_per_s", "reservation_p50_ms"}
    assert set(report["ratios"]) == {"jobs_vs_reservation_loop"}
    assert "jobs_vs_reservation_loop" in table


def test_a_tiny_sweep_accounts_for_every_utterance_and_exits_0(tmp_path: Path) -> None:
    out, fates_file = tmp_path / "sweep.json", tmp_path / "fates.jsonl"
    proc = subprocess.run(
        [
            *(str(BIN / "lingua-bench"), "--sweep", "--nodes", "1", "--tts-modes", "on"),
            *("--capacity-sessions", "2", "--burst-utterances", "3", "--multipliers", "0.2"),
            *("--burst-s", "0.5", "--steady-s", "1.2", "--json", str(out), "--fates-file", str(fates_file)),
        ],
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "sweep: capacity" in proc.stdout and "goal: no FAILED skip" in proc.stdout
    sweep = json.loads(out.read_text())
    assert sweep["capacity_utterances_per_s"] > 0
    steps = {s["label"]: s for s in sweep["steps"]}
    assert set(steps) == {"capacity-tts-on-x1", "burst-tts-on-x0.2", "steady-tts-on-x0.2"}
    for label, step in steps.items():
        fates = step["fates"]
        assert f"{label}: offered" in proc.stdout  # each step prints its fates as it ends
        assert fates["unaccounted"] == []
        assert fates["sent"] == fates["completed"] + sum(fates["skipped"].values()) > 0
        for key in ("redispatches", "attempt_timeouts", "redis_kib_per_session_peak", "sessions_refused"):
            assert key in step["load"], key
    assert steps["steady-tts-on-x0.2"]["load"]["utterances_per_s"] > 0
    rows = [json.loads(line) for line in fates_file.read_text().splitlines()]
    for label, step in steps.items():  # one row per utterance, refused sessions' included
        fates = step["fates"]
        mine = [r for r in rows if r["run"] == label]
        assert len(mine) == fates["sent"] + fates["refused_utterances"]
        assert sum(r["fate"] == "completed" for r in mine) == fates["completed"]


class _AnswersOnlyTheFirst(session_pb2_grpc.SessionServiceServicer):
    """A stand-in scheduler that answers utterance 0 and ends the stream OK without answering the rest."""

    def Stream(
        self, request_iterator: Iterator[session_pb2.StreamRequest], context: grpc.ServicerContext
    ) -> Iterator[session_pb2.StreamResponse]:
        next(request_iterator)
        yield session_pb2.StreamResponse(started=session_pb2.SessionStarted(session_id="stand-in"))
        answered = False
        for request in request_iterator:
            if request.HasField("audio") and not answered:
                answered = True
                yield session_pb2.StreamResponse(result=session_pb2.UtteranceResult(utterance_index=0))
            if request.HasField("end_of_stream"):
                return


def test_the_bench_fails_its_run_when_an_utterance_is_neither_answered_nor_skipped() -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    session_pb2_grpc.add_SessionServiceServicer_to_server(_AnswersOnlyTheFirst(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        proc = subprocess.run(
            [
                *(str(BIN / "lingua-bench"), "--scheduler", f"127.0.0.1:{port}", "--sessions", "1"),
                *("--utterances", "3", "--whole-utterances", "--idle-sessions", "0", "--skip-baselines"),
                "--quiet",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        server.stop(None)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "fates: sent 3 = completed 1 + skipped 0 (none) + lost 2" in proc.stdout
    assert "lingua-bench: FAILED: utterances neither answered once nor skipped" in proc.stderr
    assert "stand-in#1: no answer" in proc.stderr and "stand-in#2: no answer" in proc.stderr
