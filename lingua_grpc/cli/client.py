"""`lingua-client`: talk to a scheduler from the command line."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path
from typing import TextIO

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from lingua_grpc import __version__
from lingua_grpc.cli._wav import WavError, demo_pcm, read_pcm16_mono, spoken_demo, write_pcm16_mono
from lingua_grpc.client import ChannelSecurity, LinguaClient, Reconnect, Session, addresses_of, open_channel
from lingua_grpc.pb import registry_pb2, registry_pb2_grpc, session_pb2


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lingua-client",
        description="Lingua client: stream a WAV file through a live translation session, or inspect the"
        " node registry (registry output is protobuf's JSON mapping).",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument(
        "--scheduler",
        default="127.0.0.1:50051",
        help="scheduler HOST:PORT, or several of one fleet separated by commas (A,B): a session that loses"
        " its scheduler resumes on the next; a registry command asks the first that answers",
    )
    p.add_argument(
        "--token",
        default=os.environ.get("LINGUA_TOKEN", ""),
        help="credential sent as `authorization: Bearer` (env LINGUA_TOKEN, which keeps it out of the"
        " process list); a client token for stream, an operator token for the registry commands",
    )
    p.add_argument("--tls-ca", default="", help="PEM CA of the scheduler's certificate: connect with TLS")
    p.add_argument("--tls-cert", default="", help="PEM client certificate (mTLS)")
    p.add_argument("--tls-key", default="", help="PEM key of --tls-cert")
    sub = p.add_subparsers(dest="command", required=True)
    stream = sub.add_parser(
        "stream", help="stream a 16-bit mono WAV file and print each translated utterance"
    )
    stream.add_argument("file", help="WAV file, 16-bit mono PCM, 8-48 kHz")
    stream.add_argument("--src", required=True, help="language spoken in the file (BCP-47, e.g. en)")
    stream.add_argument("--tgt", required=True, help="language to translate into (e.g. es)")
    stream.add_argument(
        "--realtime",
        action="store_true",
        help="send at the audio's own pace, like a microphone (default: as fast as the session takes it:"
        " the scheduler holds the file back while the session has as many utterances outstanding as it"
        " allows, and queued utterances may wait up to 120 s for a node, so none is skipped for speed)",
    )
    stream.add_argument("--chunk-ms", type=int, default=100, help="audio per message (default 100)")
    stream.add_argument(
        "--tts-out", metavar="DIR", help="write each result's synthesized speech to DIR as WAV"
    )
    stream.add_argument("--no-tts", action="store_true", help="ask for text only")
    stream.add_argument(
        "--json", action="store_true", help="print every server message as one JSON line instead"
    )
    stream.add_argument(
        "--resume-within-s",
        type=float,
        default=30.0,
        help="how long a session whose stream broke keeps trying to resume (default 30; 0: never)",
    )
    demo = sub.add_parser(
        "demo-wav", help="write a demo WAV: three English sentences spoken by espeak-ng (or tones)"
    )
    demo.add_argument("file")
    demo.add_argument(
        "--tones", action="store_true", help="tones standing in for speech (what the synthetic engine needs)"
    )
    sub.add_parser("snapshot", help="print the current registry snapshot")
    sub.add_parser("nodes", help="list registered nodes")
    sub.add_parser("pools", help="list pools")
    sub.add_parser("instances", help="list the fleet's scheduler instances (lease, address, what each holds)")
    sub.add_parser("watch", help="print one snapshot per registry version until interrupted")
    job = sub.add_parser("job", help="one job as the store records it (state, attempt, node, times, outcome)")
    job.add_argument("job_id", help="SESSION_ID:UTTERANCE_INDEX")
    session = sub.add_parser(
        "session", help="a session as the store records it (owner, progress, resumability) and its jobs"
    )
    session.add_argument("session_id")
    drain = sub.add_parser("drain", help="drain a node: no new jobs, running ones finish, then it leaves")
    drain.add_argument("node_id")
    drain.add_argument("--reason", default="lingua-client drain")
    return p


def _json(message: Message) -> str:
    """Protobuf's JSON mapping on one line, with fields at their defaults shown (index 0, empty text)."""
    return json_format.MessageToJson(message, indent=None, always_print_fields_with_no_presence=True)


def _print(message: Message) -> None:
    print(_json(message), flush=True)


def _security(args: argparse.Namespace) -> ChannelSecurity:
    return ChannelSecurity(args.token, args.tls_ca, args.tls_cert, args.tls_key)


async def _registry(args: argparse.Namespace) -> int:
    addresses = addresses_of(args.scheduler)
    for n, address in enumerate(addresses):
        async with open_channel(address, _security(args)) as channel:
            try:
                await _registry_call(args, registry_pb2_grpc.RegistryServiceStub(channel))
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.UNAVAILABLE and n + 1 < len(addresses):
                    continue  # the next scheduler of the fleet answers the same
                print(f"lingua-client: {exc.code().name}: {exc.details()}", file=sys.stderr)
                return 1
            return 0
    return 1


async def _registry_call(args: argparse.Namespace, stub: registry_pb2_grpc.RegistryServiceAsyncStub) -> None:
    if args.command == "snapshot":
        _print(await stub.GetSnapshot(registry_pb2.GetSnapshotRequest()))
    elif args.command == "nodes":
        _print(await stub.ListNodes(registry_pb2.ListNodesRequest()))
    elif args.command == "pools":
        _print(await stub.ListPools(registry_pb2.ListPoolsRequest()))
    elif args.command == "instances":
        _print(await stub.ListInstances(registry_pb2.ListInstancesRequest()))
    elif args.command == "job":
        _print(await stub.GetJob(registry_pb2.GetJobRequest(job_id=args.job_id)))
    elif args.command == "session":
        _print(await stub.GetSession(registry_pb2.GetSessionRequest(session_id=args.session_id)))
    elif args.command == "drain":
        _print(await stub.DrainNode(registry_pb2.DrainNodeRequest(node_id=args.node_id, reason=args.reason)))
    elif args.command == "watch":
        async for update in stub.WatchSnapshots(registry_pb2.WatchSnapshotsRequest()):
            _print(update)


async def _stream(args: argparse.Namespace) -> int:
    try:
        pcm, rate = read_pcm16_mono(args.file)
    except (OSError, WavError) as exc:
        print(f"lingua-client: {exc}", file=sys.stderr)
        return 2
    options = session_pb2.SessionOptions(tts_enabled=False) if args.no_tts else session_pb2.SessionOptions()
    if not args.realtime:
        # Sent faster than it is spoken, a recording keeps the session's window full: its utterances queue
        # for the fleet by design, so they may wait as long as the contract allows rather than 5 s.
        options.queue_timeout_ms = QUEUE_TIMEOUT_MAX_MS
    tts_dir = Path(args.tts_out) if args.tts_out else None
    if tts_dir is not None:
        tts_dir.mkdir(parents=True, exist_ok=True)
    step = 2 * rate * args.chunk_ms // 1000
    reconnect = Reconnect(within_s=args.resume_within_s)
    async with LinguaClient(
        args.scheduler, args.token, args.tls_ca, args.tls_cert, args.tls_key, reconnect=reconnect
    ) as client:
        try:
            session = await client.start_session(
                args.src, args.tgt, rate, options, client_name="lingua-client"
            )
        except grpc.aio.AioRpcError as exc:
            print(f"lingua-client: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
        if args.json:
            print(
                _json(session_pb2.StreamResponse(started=session.started)),
                flush=True,
            )
        else:
            o = session.started.options
            print(
                f"session {session.session_id} {args.src}>{args.tgt}: {len(pcm) // 2 * 1000 // rate} ms of audio,"
                f" pause {o.pause_ms} ms, tts {'on' if o.tts_enabled else 'off'}",
                file=sys.stderr,
            )

        progress = Progress(session, len(pcm) // 2, sys.stderr)

        async def send() -> None:
            for i in range(0, len(pcm), step):
                await session.send_audio(pcm[i : i + step])  # waits while the session's window is full
                progress.show()
                if args.realtime:
                    await asyncio.sleep(args.chunk_ms / 1000)  # pace of a live microphone
            await session.end()

        sender = asyncio.create_task(send())
        try:
            async for message in session:
                progress.count(message)
                if message.WhichOneof("kind") in ("result", "skipped", "warning") or args.json:
                    progress.clear()
                if args.json:
                    print(_json(message), flush=True)
                else:
                    _print_human(message, tts_dir)
                progress.show()
            await sender
        except grpc.aio.AioRpcError as exc:
            progress.clear()
            print(f"lingua-client: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return 1
        finally:
            sender.cancel()
        progress.done()
    return 0


QUEUE_TIMEOUT_MAX_MS = 120_000  # SessionOptions.queue_timeout_ms's upper bound (session.proto)


class Progress:
    """A one-line progress bar on stderr when it is a terminal (redrawn in place at most 10 times a second,
    cleared before other output), and a summary line at the end either way. Never on stdout, so `--json`
    output stays one message per line."""

    WIDTH = 24

    def __init__(self, session: Session, total_samples: int, out: TextIO) -> None:
        self._session = session
        self._total = max(1, total_samples)
        self._out = out
        self._live = out.isatty()
        self._shown_at = 0.0
        self._drawn = False
        self._started = time.monotonic()
        self.results = 0
        self.skipped: dict[str, int] = {}

    def count(self, message: session_pb2.StreamResponse) -> None:
        kind = message.WhichOneof("kind")
        if kind == "result":
            self.results += 1
        elif kind == "skipped":
            reason = session_pb2.SkipReason.Name(message.skipped.reason).removeprefix("SKIP_REASON_")
            self.skipped[reason] = self.skipped.get(reason, 0) + 1

    def line(self) -> str:
        s = self._session
        sent = min(1.0, s.sent_samples / self._total)
        filled = int(sent * self.WIDTH)
        answered = self.results + sum(self.skipped.values())
        skipped = sum(self.skipped.values())
        return (
            f"[{'#' * filled}{'.' * (self.WIDTH - filled)}] {100 * sent:3.0f}% sent,"
            f" {answered}/{max(answered, s.utterances_cut)} utterances answered,"
            f" {s.outstanding}/{s.window or '?'} outstanding, {skipped} skipped,"
            f" {time.monotonic() - self._started:.0f} s"
        )

    def show(self) -> None:
        now = time.monotonic()
        if not self._live or now - self._shown_at < 0.1:
            return
        self._shown_at = now
        self._out.write("\r\x1b[K" + self.line())
        self._out.flush()
        self._drawn = True

    def clear(self) -> None:
        if self._drawn:
            self._out.write("\r\x1b[K")
            self._out.flush()
            self._drawn = False
            self._shown_at = 0.0  # redrawn at once after what was printed

    def done(self) -> None:
        self.clear()
        skipped = sum(self.skipped.values())
        why = "".join(f", {n} {reason}" for reason, n in sorted(self.skipped.items()))
        print(
            f"{self.results + skipped} utterances: {self.results} results, {skipped} skipped{why},"
            f" in {time.monotonic() - self._started:.1f} s",
            file=self._out,
            flush=True,
        )


def _print_human(message: session_pb2.StreamResponse, tts_dir: Path | None) -> None:
    kind = message.WhichOneof("kind")
    if kind == "result":
        r = message.result
        t = r.timings
        line = (
            f"#{r.utterance_index} {r.source_text}\n   -> {r.translated_text}\n"
            f"   node {r.node_id}, attempt {r.attempt}, {r.audio_duration_ms} ms of speech;"
            f" queue {t.queue_ms} ms, asr {t.asr_ms} ms, mt {t.translation_ms} ms, tts {t.tts_ms} ms,"
            f" total {t.total_ms} ms"
        )
        if tts_dir is not None and r.tts_audio:
            path = tts_dir / f"utterance-{r.utterance_index:04d}.wav"
            write_pcm16_mono(path, r.tts_audio, r.tts_audio_format.sample_rate_hz)
            line += f"\n   speech: {path}"
        print(line, flush=True)
    elif kind == "skipped":
        s = message.skipped
        print(
            f"#{s.utterance_index} skipped: {session_pb2.SkipReason.Name(s.reason)}: {s.message}", flush=True
        )
    elif kind == "warning":
        print(f"warning {message.warning.code}: {message.warning.message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "demo-wav":
        speech = None if args.tones else spoken_demo()
        if speech is None:
            write_pcm16_mono(args.file, demo_pcm(), 16000)
            why = "" if args.tones else " (espeak-ng is not installed: no speech)"
            print(f"wrote {args.file}: three tones standing in for speech, 16 kHz mono{why}")
        else:
            write_pcm16_mono(args.file, *speech)
            print(f"wrote {args.file}: three English sentences spoken by espeak-ng, {speech[1]} Hz mono")
        return 0
    try:
        _security(args).check()
    except ValueError as exc:
        print(f"lingua-client: {exc}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_stream(args) if args.command == "stream" else _registry(args))
    except BrokenPipeError:  # `lingua-client ... | head`: the reader left; not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
