"""`lingua-dev` (what `make run` starts): a scheduler on embedded Redis plus one local synthetic node agent.

Both are real child processes with their logs on this terminal's stderr. Ctrl-C drains the node, then
stops the scheduler (which stops its embedded Redis).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from lingua_grpc.cli._wav import demo_pcm, write_pcm16_mono

BIN = Path(sys.executable).parent


def _start_scheduler(listen: str, metrics_port: int) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [
            str(BIN / "lingua-scheduler"),
            "--listen",
            listen,
            "--metrics-port",
            str(metrics_port),
            "--log-format",
            "text",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()  # the scheduler prints one line once it serves
    if not line.startswith("lingua-scheduler listening on"):
        proc.wait()
        raise SystemExit(f"lingua-dev: the scheduler did not start (exit {proc.returncode})")
    return proc, line.strip()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lingua-dev", description=__doc__)
    parser.add_argument("--listen", default=os.environ.get("LINGUA_LISTEN", "127.0.0.1:50051"))
    parser.add_argument(
        "--metrics-port", type=int, default=int(os.environ.get("LINGUA_METRICS_PORT", "9464"))
    )
    parser.add_argument("--pairs", default="en-es,en-zh,en-de")
    parser.add_argument("--max-concurrency", type=int, default=4)
    args = parser.parse_args(argv)

    demo = Path(sys.prefix) / "lingua-demo.wav"
    write_pcm16_mono(demo, demo_pcm(), 16000)
    scheduler, banner = _start_scheduler(args.listen, args.metrics_port)
    address = banner.removeprefix("lingua-scheduler listening on ").split(" ", 1)[0]
    node = subprocess.Popen(
        [
            str(BIN / "lingua-node"),
            "--scheduler",
            address,
            "--node-id",
            "local-synthetic-1",
            "--pairs",
            args.pairs,
            "--max-concurrency",
            str(args.max_concurrency),
            "--engine",
            "synthetic",
            "--log-format",
            "text",
        ],
    )
    print(
        f"\n{banner}\n"
        f"node agent local-synthetic-1 (synthetic engine, pairs {args.pairs}) connecting to {address}\n\n"
        f"Try (three tones standing in for speech, translated by the synthetic engine):\n"
        f"  {BIN / 'lingua-client'} --scheduler {address} stream {demo} --src en --tgt es --tts-out /tmp/lingua-tts\n\n"
        f"More:\n"
        f"  {BIN / 'lingua-client'} --scheduler {address} watch\n"
        f"  grpcurl -plaintext {address} list\n\n"
        f"Ctrl-C stops both.\n",
        flush=True,
    )
    stopping = False

    def stop(_sig: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    while not stopping and scheduler.poll() is None:
        time.sleep(0.2)  # a supervisor loop: wakes to notice a signal or the scheduler exiting
    for proc in (node, scheduler):  # node first: it drains and leaves while the scheduler still serves
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
