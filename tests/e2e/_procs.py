"""Real scheduler and node agent processes for end-to-end and fault tests."""

from __future__ import annotations

import asyncio
import os
import re
import select
import signal
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

BIN = Path(sys.executable).parent
BANNER = re.compile(r"listening on (?P<grpc>\S+) \(metrics (?P<metrics>\S+), redis (?P<redis>.+)\)")

FAST = (
    "--heartbeat-interval-ms",
    "200",
    "--lease-check-interval-ms",
    "50",
    "--snapshot-poll-ms",
    "20",
    "--log-format",
    "text",
    # Admission by load is off: the tests share this machine's CPUs with the scheduler, and a refusal for
    # load would fail a test about something else. Its own tests turn it on (tests/integration/test_bounds).
    *("--overload-loop-lag-ms", "0", "--overload-loop-busy-percent", "0"),
    *("--overload-queue-wait-ms", "0"),
)


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[str]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def send(self, sig: signal.Signals) -> None:
        self.popen.send_signal(sig)

    async def wait(self, timeout_s: float = 15) -> int:
        """The exit code. Polls: a thread blocked in wait() would outlive the test's event loop."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while (code := self.popen.poll()) is None:
            if loop.time() > deadline:
                raise AssertionError(
                    f"{self.name} still running after {timeout_s} s; log:\n{self.log()[-3000:]}"
                )
            await asyncio.sleep(0.02)
        return code

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGCONT)  # a stopped process must run to die cleanly
            self.popen.kill()
            self.popen.wait()

    async def log_contains(self, text: str, timeout_s: float = 15) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while text not in self.log():
            if loop.time() > deadline:
                raise AssertionError(f"{self.name} never logged {text!r}; log:\n{self.log()[-3000:]}")
            await asyncio.sleep(0.02)


@dataclass
class SchedulerProc(Proc):
    grpc: str = ""
    metrics: str = ""
    redis: str = ""

    async def metric(self, name: str, **labels: str) -> float:
        text = await asyncio.to_thread(
            lambda: urllib.request.urlopen(self.metrics, timeout=5).read().decode()
        )
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    return float(sample.value)
        return 0.0


async def start_scheduler(tmp: Path, *args: str, wait_ready: bool = True) -> SchedulerProc:
    proc = spawn_scheduler(tmp, *args)
    if wait_ready:
        await ready(proc)
    return proc


def spawn_scheduler(tmp: Path, *args: str) -> SchedulerProc:
    log_path = tmp / f"scheduler-{len(list(tmp.glob('scheduler-*')))}.log"
    popen = subprocess.Popen(
        [str(BIN / "lingua-scheduler"), "--listen", "127.0.0.1:0", "--metrics-port", "0", *FAST, *args],
        stdout=subprocess.PIPE,
        stderr=log_path.open("w"),
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    return SchedulerProc("scheduler", popen, log_path)


async def ready(proc: SchedulerProc, timeout_s: float = 30) -> None:
    stdout = proc.popen.stdout
    assert stdout is not None
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not select.select([stdout], [], [], 0)[0]:  # polled, so no thread is left blocked on the pipe
        if loop.time() > deadline or proc.popen.poll() is not None:
            raise AssertionError(f"scheduler not ready; log:\n{proc.log()[-3000:]}")
        await asyncio.sleep(0.02)
    line = stdout.readline()
    match = BANNER.search(line)
    assert match, f"unexpected first line {line!r}; log:\n{proc.log()[-3000:]}"
    proc.grpc, proc.metrics, proc.redis = match["grpc"], match["metrics"], match["redis"]


def start_node(tmp: Path, scheduler: str, node_id: str, *args: str, pairs: str = "en-es,en-zh") -> Proc:
    log_path = tmp / f"node-{node_id}.log"
    popen = subprocess.Popen(
        [
            str(BIN / "lingua-node"),
            "--scheduler",
            scheduler,
            "--node-id",
            node_id,
            "--pairs",
            pairs,
            "--max-concurrency",
            "2",
            "--engine",
            "synthetic",
            "--reconnect-max-ms",
            "500",
            "--log-format",
            "text",
            *args,
        ],
        stdout=subprocess.DEVNULL,
        stderr=log_path.open("w"),
        text=True,
    )
    return Proc(f"node {node_id}", popen, log_path)
