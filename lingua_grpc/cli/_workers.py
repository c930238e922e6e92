"""`lingua-scheduler --workers N`: N scheduler processes behind one listen address, one host's every core.

The kernel spreads new connections over the processes listening on the port (SO_REUSEPORT); each process is
an instance of the fleet (`<instance-id>-w<N>`), so a session on one is served by a node on another through
the hand-off every instance does. This process supervises them: it resolves the port (0 picks one for all),
starts the shared embedded redis-server when no Redis is configured, forwards SIGTERM/SIGINT to every worker
and waits for them, and starts a worker that died again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from dataclasses import dataclass

from lingua_grpc.config import Settings
from lingua_grpc.store import EmbeddedRedis
from lingua_grpc.store._embedded import die_with_parent, free_port

log = logging.getLogger("lingua_grpc.scheduler")

RESTART_DELAY_S = 1.0  # a worker that died is started again after this (not a tight crash loop)


@dataclass
class Worker:
    index: int
    instance_id: str
    argv: list[str]
    proc: asyncio.subprocess.Process | None = None
    banner: str = ""


def _worker_argv(
    argv: list[str], listen: str, redis_url: str, instance_id: str, metrics_port: int
) -> list[str]:
    # argparse keeps the last of a repeated flag: the overrides go after what the operator gave.
    return [
        sys.executable,
        "-m",
        "lingua_grpc.cli.scheduler",
        *argv,
        "--workers",
        "1",
        "--reuse-port",
        "true",
        "--listen",
        listen,
        "--instance-id",
        instance_id,
        "--metrics-port",
        str(metrics_port),
        *(("--redis-url", redis_url) if redis_url else ()),
    ]


async def supervise(settings: Settings, argv: list[str]) -> int:
    host, _, port = settings.listen.rpartition(":")
    listen = f"{host}:{port if port != '0' else free_port(host)}"
    embedded = None
    redis_url = settings.redis_url
    if not redis_url:
        embedded = EmbeddedRedis(
            settings.redis_server_path, maxmemory_mb=settings.embedded_redis_maxmemory_mb
        )
        redis_url = await embedded.start()
    workers = [
        Worker(
            i,
            f"{settings.instance_id}-w{i}",
            _worker_argv(
                argv,
                listen,
                redis_url,
                f"{settings.instance_id}-w{i}",
                settings.metrics_port + i if settings.metrics_port > 0 else settings.metrics_port,
            ),
        )
        for i in range(settings.workers)
    ]
    loop = asyncio.get_running_loop()
    stopping = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    try:
        await asyncio.gather(*(_start(w) for w in workers))
        if any(not w.banner for w in workers):
            log.error("a worker did not start; stopping the others")
            return 1
        metrics = ",".join(_metrics_of(w.banner) for w in workers)
        redis_note = f"embedded {redis_url}" if embedded is not None else "configured Redis"
        print(
            f"lingua-scheduler listening on {listen} (metrics {metrics}, redis {redis_note};"
            f" workers {len(workers)})",
            flush=True,
        )
        watchers = [asyncio.create_task(_keep_running(w, stopping)) for w in workers]
        await stopping.wait()
        log.info("signal received, stopping every worker", extra={"workers": len(workers)})
        for w in workers:
            if w.proc is not None and w.proc.returncode is None:
                w.proc.send_signal(signal.SIGTERM)
        await asyncio.gather(*watchers)
        return 0
    finally:
        for w in workers:
            if w.proc is not None and w.proc.returncode is None:
                w.proc.kill()
                await w.proc.wait()
        if embedded is not None:
            await embedded.stop()


async def _start(worker: Worker) -> None:
    """Starts the worker and waits for its banner (its first line: it serves)."""
    # A supervisor killed -9 takes its workers with it: none is left holding the port.
    worker.proc = await asyncio.create_subprocess_exec(
        *worker.argv, stdout=asyncio.subprocess.PIPE, preexec_fn=die_with_parent
    )
    assert worker.proc.stdout is not None
    worker.banner = (await worker.proc.stdout.readline()).decode().strip()


async def _keep_running(worker: Worker, stopping: asyncio.Event) -> None:
    """Waits for the worker to exit; one that exits before the stop is started again."""
    while True:
        assert worker.proc is not None
        code = await worker.proc.wait()
        if stopping.is_set():
            return
        log.error(
            "worker exited; starting it again",
            extra={"worker": worker.index, "instance_id": worker.instance_id, "exit_code": code},
        )
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), RESTART_DELAY_S)
        if stopping.is_set():
            return
        await _start(worker)


def _metrics_of(banner: str) -> str:
    _, _, rest = banner.partition("(metrics ")
    return rest.split(",", 1)[0] or "off"
