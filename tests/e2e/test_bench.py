"""`lingua-bench` at tiny size, so the benchmark keeps working (figures come from `make bench`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

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
