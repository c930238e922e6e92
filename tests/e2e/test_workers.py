"""`lingua-scheduler --workers 2`: two scheduler processes behind one address, each an instance of the fleet,
sharing one embedded redis-server; sessions on both are served; SIGTERM stops them all."""

from __future__ import annotations

import asyncio
import os
import signal
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from lingua_grpc.client import LinguaClient
from tests.audio import silence, tone
from tests.conftest import wait_until
from tests.e2e._procs import start_node, start_scheduler
from tests.fault._drill import answers

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.timeout(120)]


def worker_pids(pid: int) -> list[int]:
    """The scheduler worker processes `pid` started (Linux /proc)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [
        int(c) for c in children if b"lingua_grpc.cli.scheduler" in Path(f"/proc/{c}/cmdline").read_bytes()
    ]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def metric(metrics_url: str, name: str) -> float:
    text = urllib.request.urlopen(metrics_url, timeout=5).read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return float(sample.value)
    return 0.0


async def test_two_workers_behind_one_address_serve_sessions_from_both_and_stop_together(
    tmp_path: Path,
) -> None:
    scheduler = await start_scheduler(tmp_path, "--workers", "2")
    node = start_node(tmp_path, scheduler.grpc, "gpu-1", "--synthetic-latency-ms", "50")
    try:
        await node.log_contains("registered")

        async def every_worker_sees_the_node() -> bool:
            versions = [
                await asyncio.to_thread(metric, url, "lingua_registry_version")
                for url in scheduler.metrics.split(",")
            ]
            return all(v >= 1 for v in versions)

        await wait_until(every_worker_sees_the_node, what="the node in both workers' snapshots")
        workers = worker_pids(scheduler.popen.pid)
        assert len(workers) == 2

        async def one_session() -> list[tuple[int, str]]:
            # A client of its own per session: a new connection, which the kernel gives to either worker.
            own_connection = [("grpc.use_local_subchannel_pool", 1)]
            async with LinguaClient(scheduler.grpc, options=own_connection) as client:
                session = await client.start_session("en", "es")
                await session.send_audio(tone(300) + silence(800))
                await session.end()
                return answers([m async for m in session])

        replies = await asyncio.wait_for(asyncio.gather(*(one_session() for _ in range(16))), 60)
        assert replies == [[(0, "result")]] * 16
        per_worker = [
            await asyncio.to_thread(metric, url, "lingua_results_sent_total")
            for url in scheduler.metrics.split(",")
        ]
        assert len(per_worker) == 2 and sum(per_worker) == 16
        assert all(n > 0 for n in per_worker), f"one worker served every session: {per_worker}"
        scheduler.send(signal.SIGTERM)
        assert await scheduler.wait(20) == 0
        assert not any(alive(w) for w in workers)
    finally:
        node.kill()
        scheduler.kill()


async def test_workers_die_with_their_supervisor_killed_9(tmp_path: Path) -> None:
    """No worker is left behind holding the port when the supervisor itself is killed -9."""
    scheduler = await start_scheduler(tmp_path, "--workers", "2")
    workers = worker_pids(scheduler.popen.pid)
    assert len(workers) == 2
    scheduler.kill()

    async def workers_gone() -> bool:
        return not any(alive(w) for w in workers)

    await wait_until(workers_gone, what="both workers gone after their supervisor was killed")
