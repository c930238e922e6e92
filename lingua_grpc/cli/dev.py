"""`lingua-dev` (what `make run` starts): a scheduler on embedded Redis plus one local node agent with real
engines for en>es (faster-whisper, Apertium, espeak-ng), or `--synthetic` ones for any pair.

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

from lingua_grpc.cli._wav import demo_pcm, spoken_demo, write_pcm16_mono

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
    parser.add_argument(
        "--synthetic", action="store_true", help="a synthetic node (stand-in output, any pair) instead"
    )
    parser.add_argument(
        "--pairs", default="", help="pairs served (default en-es; synthetic: en-es,en-zh,en-de)"
    )
    parser.add_argument("--max-concurrency", type=int, default=2)
    args = parser.parse_args(argv)

    demo = Path(sys.prefix) / "lingua-demo.wav"
    speech = None if args.synthetic else spoken_demo()
    if args.synthetic or speech is None:
        write_pcm16_mono(demo, demo_pcm(), 16000)
        what = "three tones standing in for speech"
    else:
        write_pcm16_mono(demo, *speech)
        what = "three English sentences spoken by espeak-ng"
    if args.synthetic:
        node_id, pairs, engines = (
            "local-synthetic-1",
            args.pairs or "en-es,en-zh,en-de",
            ["--engine", "synthetic"],
        )
        described = "synthetic engine"
    else:
        node_id, pairs = "local-1", args.pairs or "en-es"
        engines = ["--asr", "faster-whisper", "--mt", "apertium", "--tts", "espeak-ng"]
        described = "faster-whisper tiny.en, Apertium, espeak-ng"
    scheduler, banner = _start_scheduler(args.listen, args.metrics_port)
    address = banner.removeprefix("lingua-scheduler listening on ").split(" ", 1)[0]
    node = subprocess.Popen(
        [
            str(BIN / "lingua-node"),
            "--scheduler",
            address,
            "--node-id",
            node_id,
            "--pairs",
            pairs,
            "--max-concurrency",
            str(args.max_concurrency),
            *engines,
            "--log-format",
            "text",
        ],
    )
    print(
        f"\n{banner}\n"
        f"node agent {node_id} ({described}; pairs {pairs}) connecting to {address}\n\n"
        f"Try ({what}; each result's speech is written to /tmp/lingua-tts):\n"
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
