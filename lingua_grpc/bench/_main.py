"""lingua-bench: drives sessions through a scheduler and reports its overhead beside bare baselines.

Phases, all in one run so every figure has a ratio taken on the same machine at the same moment:
1. load: S sessions stream U utterances each (as fast as possible, or at real-time pace) to N synthetic
   nodes; per result the scheduler reports its own dispatch and delivery time (StageTimings);
2. idle: K sessions are opened and left idle; the scheduler's RSS growth per session is measured;
3. baselines: a bare grpc.aio bidirectional echo with the same messages and number of streams, and a bare
   loop of the reservation script (reserve + release) through redis-py.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import functools
import json
import os
import random
import re
import shlex
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import grpc
import numpy as np
from prometheus_client.parser import text_string_to_metric_families
from redis.asyncio import Redis
from tqdm import tqdm

from lingua_grpc._grpc import read_message
from lingua_grpc.bench._fates import Fates, Ledger, account, fate_rows
from lingua_grpc.cli._wav import DEMO_SENTENCES, spoken_demo
from lingua_grpc.client import LinguaClient, Session
from lingua_grpc.client._session import RESUMABLE
from lingua_grpc.jobs import JobStore
from lingua_grpc.pb import registry_pb2, registry_pb2_grpc, session_pb2
from lingua_grpc.registry import LanguagePair, NodeCapabilities, NodeRegistry, Registration
from lingua_grpc.store import JobKeys, RegistryKeys, ScriptBook

BIN = Path(sys.executable).parent
RATE = 16000
CHUNK_MS = 20
PAGE = os.sysconf("SC_PAGE_SIZE")
TICKS = os.sysconf("SC_CLK_TCK")


SPEECH_MS, SILENCE_MS = 300, 900
UTTERANCE_MS = SPEECH_MS + SILENCE_MS


def utterance_pcm(i: int) -> bytes:
    """300 ms of tone (speech stand-in) then 900 ms of silence: one utterance per 1.2 s of audio."""
    t = np.arange(RATE * SPEECH_MS // 1000) / RATE
    speech = (8000 * np.sin(2 * np.pi * (300 + 40 * (i % 7)) * t)).astype("<i2").tobytes()
    return speech + bytes(2 * RATE * SILENCE_MS // 1000)


def chunked(pcm: bytes, chunk_ms: int = CHUNK_MS, rate: int = RATE) -> list[bytes]:
    step = 2 * rate * chunk_ms // 1000
    return [pcm[i : i + step] for i in range(0, len(pcm), step)]


@functools.cache
def spoken_utterances() -> tuple[list[bytes], int]:
    """English sentences spoken by espeak-ng, each followed by a second of silence (for --real-engines)."""
    sentences, rate = [], RATE
    for sentence in DEMO_SENTENCES:
        speech = spoken_demo((sentence,))
        if speech is None:
            raise SystemExit("lingua-bench: --real-engines needs espeak-ng (make setup installs it)")
        sentences.append(speech[0])
        rate = speech[1]
    return sentences, rate


def _raw(data: bytes) -> bytes:
    return data


def percentile(values: list[float], p: float) -> float:
    return float(np.percentile(values, p)) if values else 0.0


@dataclass
class Proc:
    popen: subprocess.Popen[str]

    def cpu_s(self) -> float:
        fields = Path(f"/proc/{self.popen.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICKS

    def runqueue_wait_s(self) -> float:
        """Time the process's threads spent ready to run but waiting for a CPU (Linux schedstat)."""
        total = 0
        for path in Path(f"/proc/{self.popen.pid}/task").glob("*/schedstat"):
            try:
                total += int(path.read_text().split()[1])
            except (OSError, IndexError, ValueError):
                continue  # a thread that ended meanwhile
        return total / 1e9

    def rss_bytes(self) -> int:
        return int(Path(f"/proc/{self.popen.pid}/statm").read_text().split()[1]) * PAGE

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()


def _log_file(log_dir: str, name: str) -> Any:
    if not log_dir:
        return subprocess.DEVNULL
    Path(log_dir).mkdir(parents=True, exist_ok=True)
    return (Path(log_dir) / f"{name}.log").open("w")


def spawn(args: list[str], banner: str, log_dir: str = "", name: str = "") -> tuple[Proc, str]:
    popen = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=_log_file(log_dir, name), text=True)
    assert popen.stdout is not None
    line = popen.stdout.readline()
    if banner not in line:
        popen.kill()
        raise SystemExit(f"lingua-bench: {args[0]} did not start: {line!r}")
    return Proc(popen), line


@dataclass
class Report:
    config: dict[str, Any]
    load: dict[str, float] = field(default_factory=dict)
    idle: dict[str, float] = field(default_factory=dict)
    baselines: dict[str, float] = field(default_factory=dict)
    ratios: dict[str, float] = field(default_factory=dict)
    fates: Fates = field(default_factory=Fates)


async def redis_calls(redis: Redis) -> dict[str, int]:
    stats = await redis.info("commandstats")
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}


async def run_session(
    client: LinguaClient,
    args: argparse.Namespace,
    bar: tqdm,
    sink: dict[str, list[float]],
    delay_s: float,
    ledger: Ledger,
) -> int:
    """One session: sends its utterances and records every answer in `ledger` (see _fates). A refusal at
    start and a stream that ends with an error are recorded there too, never raised: the run's accounting
    decides what they cost."""
    await asyncio.sleep(delay_s)  # --ramp-s: sessions arrive spread over the ramp, as users do
    give_up_at = time.perf_counter() + args.retry_refused_s
    # A start that fails with a transient status (UNAVAILABLE, INTERNAL, CANCELLED, UNKNOWN) is tried once
    # more at once, as a client app would: under thousands of refusals a second grpcio's asyncio client sees
    # about one refusal in a thousand as INTERNAL or CANCELLED (grpc/grpc#36066, which the scheduler's
    # refusal_read_ms narrows). Each is counted (start_errors); one that fails twice stays a fault.
    transient_retries = 1
    while True:
        asked = time.perf_counter()
        try:
            session = await client.start_session(
                "en",
                "es",
                spoken_utterances()[1] if args.real_engines else RATE,
                session_pb2.SessionOptions(tts_enabled=args.real_engines or args.tts),
            )
            break
        except grpc.aio.AioRpcError as exc:
            refused = exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            if refused:
                sink["refused_ms"].append((time.perf_counter() - asked) * 1000)  # how long a refusal took
            else:  # not admission: a fault, unaccounted unless a retry (below) gets the session started
                sink["start_errors"].append(1)
                ledger.start_errors.append(exc.code().name)
                ledger.error = f"{exc.code().name} at start: {exc.details()}"
                if exc.code() in RESUMABLE and transient_retries > 0:
                    transient_retries -= 1
                    await asyncio.sleep(random.uniform(0.05, 0.15))
                    continue
            # --retry-refused-s: as a client app would, try again after the scheduler's hint, jittered (a
            # transient error too: UNAVAILABLE, INTERNAL, CANCELLED, UNKNOWN).
            wait_s = retry_after_s(exc) * random.uniform(0.5, 1.5)
            if (not refused and exc.code() not in RESUMABLE) or time.perf_counter() + wait_s > give_up_at:
                ledger.refused = refused
                bar.update(args.utterances)
                return 0
            await asyncio.sleep(wait_s)
    ledger.error = ""  # started after all
    ledger.name = session.session_id or ledger.name
    sink["admitted"].append(1)
    rate = RATE
    # (audio, is_final, index of the utterance this message completes or -1)
    messages: list[tuple[bytes, bool, int]] = []
    if args.real_engines:  # spoken sentences, a chunk at a time (real ASR needs real speech)
        spoken, rate = spoken_utterances()
        for i in range(args.utterances):
            chunks = chunked(spoken[i % len(spoken)], args.chunk_ms, rate)
            messages += [(c, False, i if k == len(chunks) - 1 else -1) for k, c in enumerate(chunks)]
    elif args.whole_utterances:  # one message per utterance, marked final: measures jobs, not audio ingest
        messages = [(utterance_pcm(i), True, i) for i in range(args.utterances)]
    else:
        for i in range(args.utterances):
            chunks = chunked(utterance_pcm(i), args.chunk_ms)
            messages += [(c, False, i if k == len(chunks) - 1 else -1) for k, c in enumerate(chunks)]
    sent_at: dict[int, float] = {}

    async def send() -> None:
        # Real time: each session keeps its own microphone clock and joins at a random moment of the
        # utterance cycle, as independent speakers do. Sessions in lockstep would end their utterances
        # within one chunk of each other: a burst of S jobs at once that no fleet of clients produces
        # (`--lockstep` measures that burst on purpose). Whole utterances in real time: one per utterance's
        # length of audio (a push-to-talk speaker); `steady` (the sweep) sends the first at once, the
        # sessions' starts being spread over one period by the ramp.
        loop = asyncio.get_running_loop()
        period = UTTERANCE_MS / 1000 if args.whole_utterances else args.chunk_ms / 1000
        phase = period if args.lockstep else UTTERANCE_MS / 1000
        start = loop.time() + (0.0 if args.steady else random.uniform(0, phase))
        for k, (chunk, final, index) in enumerate(messages):
            if args.realtime:
                await asyncio.sleep(max(0.0, start + k * period - loop.time()))
            await session.send_audio(chunk, is_final=final)
            if index >= 0:
                sent_at[index] = time.perf_counter()
                ledger.sent = index + 1
        await session.end()

    sender = asyncio.create_task(send())
    try:
        async for message in session:
            kind = message.WhichOneof("kind")
            if kind == "result":
                r = message.result
                ledger.result(r.utterance_index)
                ledger.attempts[r.utterance_index] = r.attempt
                t = r.timings
                sink["dispatch_us"].append(t.scheduler_dispatch_us)
                sink["delivery_us"].append(t.scheduler_delivery_us)
                sink["overhead_us"].append(t.scheduler_dispatch_us + t.scheduler_delivery_us)
                sink["total_ms"].append(t.total_ms)
                if r.utterance_index in sent_at:
                    ms = (time.perf_counter() - sent_at[r.utterance_index]) * 1000
                    sink["client_ms"].append(ms)
                    ledger.latency_ms[r.utterance_index] = ms
                if r.attempt > 1:
                    sink["later_attempts"].append(r.attempt)
                speech_ms = max(r.audio_duration_ms, 1)
                sink["asr_rtf"].append(t.asr_ms / speech_ms)
                sink["mt_rtf"].append(t.translation_ms / speech_ms)
                sink["tts_rtf"].append(t.tts_ms / speech_ms)
                bar.update(1)
            elif kind == "skipped":
                reason = session_pb2.SkipReason.Name(message.skipped.reason).removeprefix("SKIP_REASON_")
                ledger.skipped(message.skipped.utterance_index, reason)
                if message.skipped.utterance_index in sent_at:
                    ms = (time.perf_counter() - sent_at[message.skipped.utterance_index]) * 1000
                    ledger.latency_ms[message.skipped.utterance_index] = ms
                sink["skipped"].append(1)
                bar.update(1)
        await sender
    except (grpc.aio.AioRpcError, asyncio.InvalidStateError, grpc.aio.UsageError) as exc:
        code = exc.code().name if isinstance(exc, grpc.aio.AioRpcError) else type(exc).__name__
        details = exc.details() if isinstance(exc, grpc.aio.AioRpcError) else str(exc)
        ledger.error = f"{code}: {details}"
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
    return len(messages)


def retry_after_s(exc: grpc.aio.AioRpcError, default_s: float = 1.0) -> float:
    """The refusal's `retry-after-ms` trailer, in seconds (default_s when it has none)."""
    # grpc.aio.Metadata iterates as (key, value) pairs; its stubs type the items as opaque.
    trailers = cast("Iterable[tuple[str, str | bytes]]", exc.trailing_metadata() or ())
    for key, value in trailers:
        if key == "retry-after-ms":
            try:
                return max(0.0, int(value) / 1000)
            except ValueError:
                break
    return default_s


def write_fates(path: str, label: str, ledgers: list[Ledger]) -> None:
    """Appends every utterance's fate, one JSON line each (main empties the file; a sweep's steps append)."""
    with Path(path).open("a") as out:
        for ledger in ledgers:
            for row in fate_rows(ledger):
                out.write(json.dumps({"run": label, **row}) + "\n")


async def scheduler_samples(metrics_url: str) -> dict[tuple[str, str], float]:
    """The scheduler's /metrics samples this bench reads: job round trips and event-loop lag buckets."""
    if not metrics_url:
        return {}
    text = await asyncio.to_thread(lambda: urllib.request.urlopen(metrics_url, timeout=5).read().decode())
    out: dict[tuple[str, str], float] = collections.defaultdict(float)
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "lingua_redis_round_trips_total":
                out[(s.name, "")] += s.value
            elif s.name == "lingua_event_loop_lag_seconds_bucket":
                out[(s.name, s.labels["le"])] = s.value
            elif s.name in ("lingua_event_loop_busy_ratio", "lingua_sessions_open"):
                out[(s.name, "")] = s.value
            elif s.name in COUNTERS:  # summed over labels; skips and refusals also by reason
                out[(s.name, "")] += s.value
                if "reason" in s.labels:
                    out[(s.name, s.labels["reason"])] += s.value
    return out


# Counters of the scheduler that a run reports as the difference between before and after its load.
COUNTERS = {
    "lingua_job_redispatches_total": "redispatches",
    "lingua_job_timeouts_total": "attempt_timeouts",
    "lingua_results_fenced_total": "results_of_old_attempts_refused",
    "lingua_jobs_dispatched_total": "attempts_dispatched",
    "lingua_utterances_skipped_total": "scheduler_skips",
    "lingua_sessions_refused_total": "scheduler_sessions_refused",
}


def counter_deltas(
    before: dict[tuple[str, str], float], after: dict[tuple[str, str], float]
) -> dict[str, float]:
    """The run's share of each counter in COUNTERS; for those with a reason label, by reason too."""
    out: dict[str, float] = {}
    for (name, label), value in sorted(after.items()):
        if name in COUNTERS:
            key = COUNTERS[name] + (f"_{label}" if label else "")
            out[key] = value - before.get((name, label), 0.0)
    return out


async def handoff_mean_ms(metrics_url: str, direction: str) -> float:
    """Mean time a hand-off spent between instances (lingua_handoff_seconds), in one direction."""
    text = await asyncio.to_thread(lambda: urllib.request.urlopen(metrics_url, timeout=5).read().decode())
    total = count = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("direction") == direction:
                if sample.name == "lingua_handoff_seconds_sum":
                    total = sample.value
                elif sample.name == "lingua_handoff_seconds_count":
                    count = sample.value
    return total / count * 1000 if count else float("nan")


def lag_quantile_ms(
    before: dict[tuple[str, str], float], after: dict[tuple[str, str], float], q: float
) -> float:
    """Upper bound of the loop-lag bucket holding quantile q of the samples taken between two readings."""
    buckets = sorted(
        (float(le), after[(name, le)] - before.get((name, le), 0.0))
        for name, le in after
        if name == "lingua_event_loop_lag_seconds_bucket"
    )
    if not buckets or buckets[-1][1] <= 0:
        return float("nan")
    for bound, count in buckets:
        if count >= q * buckets[-1][1]:
            return bound * 1000
    return float("inf")


async def load_phase(
    args: argparse.Namespace,
    address: str,
    scheduler: Proc | None,
    redis: Redis | None,
    report: Report,
    metrics_url: str,
) -> None:
    sink: dict[str, list[float]] = {
        k: []
        for k in (
            "dispatch_us",
            "delivery_us",
            "overhead_us",
            "total_ms",
            "skipped",
            "refused_ms",
            "admitted",
            "client_ms",
            "later_attempts",
            "start_errors",
            "asr_rtf",
            "mt_rtf",
            "tts_rtf",
        )
    }
    calls_before = await redis_calls(redis) if redis else {}
    memory_before = int((await redis.info("memory"))["used_memory"]) if redis else 0
    memory_peak = memory_before
    samples_before = await scheduler_samples(metrics_url)
    cpu_before = scheduler.cpu_s() if scheduler else 0.0
    waited_before = scheduler.runqueue_wait_s() if scheduler else 0.0
    total = args.sessions * args.utterances
    busy: list[float] = []

    async def watch_busy() -> None:  # the loop's busy share, as the scheduler's admission sees it
        nonlocal memory_peak
        while metrics_url or redis:
            await asyncio.sleep(0.5)
            if metrics_url:
                samples = await scheduler_samples(metrics_url)
                busy.append(samples.get(("lingua_event_loop_busy_ratio", ""), 0.0))
            if redis:  # Redis memory at its highest during the load, sampled
                memory_peak = max(memory_peak, int((await redis.info("memory"))["used_memory"]))

    watcher = asyncio.create_task(watch_busy())
    ledgers = [Ledger(f"session-{i}", args.utterances) for i in range(args.sessions)]
    async with LinguaClient(address) as client:
        with tqdm(total=total, desc="utterances", unit="utt", disable=args.quiet) as bar:
            started = time.perf_counter()
            sent = await asyncio.gather(
                *(
                    run_session(client, args, bar, sink, i * args.ramp_s / args.sessions, ledger)
                    for i, ledger in enumerate(ledgers)
                )
            )
            elapsed = time.perf_counter() - started
    watcher.cancel()
    await asyncio.gather(watcher, return_exceptions=True)
    report.fates = account(ledgers)
    if args.fates_file:
        write_fates(args.fates_file, args.run_label, ledgers)
    jobs = len(sink["total_ms"])
    cpu = (scheduler.cpu_s() - cpu_before) if scheduler else 0.0
    waited = (scheduler.runqueue_wait_s() - waited_before) if scheduler else 0.0
    calls_after = await redis_calls(redis) if redis else {}
    samples = await scheduler_samples(metrics_url)
    trips = samples.get(("lingua_redis_round_trips_total", ""), 0.0) - samples_before.get(
        ("lingua_redis_round_trips_total", ""), 0.0
    )
    commands = sum(calls_after.values()) - sum(calls_before.values())
    memory = await redis.info("memory") if redis else {}
    memory_after = int(memory.get("used_memory", 0))
    admitted = max(len(sink["admitted"]), 1)
    fates = report.fates
    report.load = {
        "sessions": args.sessions,
        "sessions_admitted": len(sink["admitted"]),
        # Refused at start (RESOURCE_EXHAUSTED: the instance is saturated or full), and how fast; with
        # --retry-refused-s, refusals counts every refused try, sessions_refused those never admitted.
        "sessions_refused": fates.sessions_refused,
        "refusals": len(sink["refused_ms"]),
        # Starts that failed for another reason than a refusal (each fails the run unless retried).
        "start_errors": len(sink["start_errors"]),
        "refusal_p99_ms": percentile(sink["refused_ms"], 99) if sink["refused_ms"] else float("nan"),
        "utterances_sent": fates.sent,
        "utterances_completed": jobs,
        "utterances_skipped": len(sink["skipped"]),
        # Every utterance's fate (see _fates): skips by reason, what admission kept from being sent, and
        # what was neither answered nor skipped (a run with any of those fails).
        **{f"skipped_{reason}": n for reason, n in sorted(fates.skipped.items())},
        "utterances_of_refused_sessions": fates.refused_utterances,
        "utterances_unaccounted": fates.lost + fates.duplicated + fates.not_sent + fates.answered_unsent,
        "elapsed_s": elapsed,
        # Goodput: utterances answered with a result per second, first session's start to last answer.
        "utterances_per_s": jobs / elapsed,
        "chunks_per_s": sum(sent) / elapsed,
        "overhead_p50_ms": percentile(sink["overhead_us"], 50) / 1000,
        "overhead_p99_ms": percentile(sink["overhead_us"], 99) / 1000,
        "dispatch_p50_ms": percentile(sink["dispatch_us"], 50) / 1000,
        "dispatch_p99_ms": percentile(sink["dispatch_us"], 99) / 1000,
        "delivery_p50_ms": percentile(sink["delivery_us"], 50) / 1000,
        "delivery_p99_ms": percentile(sink["delivery_us"], 99) / 1000,
        # How late the scheduler's event loop ran a timer (bucket upper bound): the wait every await pays.
        "loop_lag_p50_ms": lag_quantile_ms(samples_before, samples, 0.5),
        "loop_lag_p99_ms": lag_quantile_ms(samples_before, samples, 0.99),
        "loop_busy_p50": percentile(busy, 50),
        "loop_busy_max": max(busy, default=0.0),
        "end_to_end_p50_ms": percentile(sink["total_ms"], 50),
        "end_to_end_p99_ms": percentile(sink["total_ms"], 99),
        # As the client sees it: its utterance's last audio sent -> its result received (queueing in the
        # session, and the load generator's own delays, included).
        "client_end_to_end_p50_ms": percentile(sink["client_ms"], 50),
        "client_end_to_end_p99_ms": percentile(sink["client_ms"], 99),
        "results_of_a_later_attempt": len(sink["later_attempts"]),
        **counter_deltas(samples_before, samples),
        # Round trips as the scheduler counts them per job operation (its metrics); commandstats also
        # counts the commands scripts run inside Redis, and the registry's own polling: all commands.
        # Each stage's time on the node over the utterance's audio duration (real-time factor; p50 / p99).
        **{
            f"{stage}_rtf_p{p}": percentile(sink[f"{stage}_rtf"], p)
            for stage in ("asr", "mt", "tts")
            for p in (50, 99)
        },
        "redis_round_trips_per_job": trips / max(jobs, 1),
        "redis_commands_per_job": commands / max(jobs, 1),
        # Redis memory right after the load: job records, and results' TTS audio kept for resumes.
        "redis_used_memory_mb": memory_after / 2**20,
        "redis_peak_memory_mb": memory_peak / 2**20,
        # What the load left in Redis, and its peak, over the sessions admitted (before: the empty fleet).
        "redis_kib_per_session_after": (memory_after - memory_before) / admitted / 1024,
        "redis_kib_per_session_peak": (max(memory_peak, memory_after) - memory_before) / admitted / 1024,
        "scheduler_cpu_s_per_1000_jobs": cpu / max(jobs, 1) * 1000,
        # Waiting for a CPU (ready, not running) per second of load: > 0 means the machine, not the
        # scheduler, is the bottleneck of the moment; every such millisecond lands in the latencies above.
        "scheduler_cpu_wait_ms_per_s": waited / elapsed * 1000,
    }


async def idle_phase(args: argparse.Namespace, address: str, scheduler: Proc | None, report: Report) -> None:
    if not args.idle_sessions or scheduler is None:
        return
    async with LinguaClient(address) as client:
        before = scheduler.rss_bytes()
        sessions: list[Session] = []
        for start in tqdm(
            range(0, args.idle_sessions, 200), desc="idle sessions", unit="x200", disable=args.quiet
        ):
            batch = range(start, min(start + 200, args.idle_sessions))
            sessions += await asyncio.gather(*(client.start_session("en", "es", RATE) for _ in batch))
        await asyncio.sleep(1.0)  # let allocations settle before reading RSS
        after = scheduler.rss_bytes()
        for session in sessions:
            session.cancel()
    report.idle = {
        "open_sessions": len(sessions),
        "rss_before_mib": before / 2**20,
        "rss_after_mib": after / 2**20,
        "rss_per_session_kib": (after - before) / len(sessions) / 1024,
    }


async def echo_baseline(args: argparse.Namespace, report: Report) -> None:
    proc, line = spawn([sys.executable, "-m", "lingua_grpc.bench._echo"], "echo listening on")
    address = line.split()[-1]
    message = session_pb2.StreamRequest(
        audio=session_pb2.AudioChunk(data=bytes(2 * RATE * args.chunk_ms // 1000))
    )
    payload = message.SerializeToString()
    per_stream = max(
        1, int(report.load.get("chunks_per_s", 0) * report.load.get("elapsed_s", 1) / max(args.sessions, 1))
    )
    per_stream = min(per_stream, args.echo_messages_per_stream)
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            method = channel.stream_stream("/bench.Echo/Stream", _raw, _raw)

            async def stream() -> int:
                call = method()  # type: ignore[call-arg]

                async def reader() -> int:
                    n = 0
                    while await read_message(call) is not None:
                        n += 1
                    return n

                reading = asyncio.create_task(reader())
                for _ in range(per_stream):
                    await call.write(payload)
                await call.done_writing()
                return await reading

            started = time.perf_counter()
            echoed = await asyncio.gather(*(stream() for _ in range(args.sessions)))
            elapsed = time.perf_counter() - started
    finally:
        proc.stop()
    report.baselines["echo_messages_per_s"] = sum(echoed) / elapsed


async def echo_idle_baseline(args: argparse.Namespace, report: Report) -> None:
    """RSS of the bare echo server per open idle stream (one message each way, as a started session)."""
    if not args.idle_sessions:
        return
    proc, line = spawn([sys.executable, "-m", "lingua_grpc.bench._echo"], "echo listening on")
    try:
        async with grpc.aio.insecure_channel(line.split()[-1]) as channel:
            method = channel.stream_stream("/bench.Echo/Stream", _raw, _raw)
            payload = session_pb2.StreamRequest(
                start=session_pb2.SessionStart(client_name="lingua-bench")
            ).SerializeToString()

            async def open_stream() -> Any:
                call = method()  # type: ignore[call-arg]
                await call.write(payload)
                await read_message(call)
                return call

            await open_stream()  # the server's first stream allocates what every later one shares
            await asyncio.sleep(0.5)
            before = proc.rss_bytes()
            calls = []
            for start in range(0, args.idle_sessions, 200):
                batch = range(start, min(start + 200, args.idle_sessions))
                calls += await asyncio.gather(*(open_stream() for _ in batch))
            await asyncio.sleep(1.0)  # as for the scheduler's idle sessions
            after = proc.rss_bytes()
            for call in calls:
                call.cancel()
    finally:
        proc.stop()
    report.baselines["echo_idle_stream_kib"] = (after - before) / len(calls) / 1024


async def reservation_baseline(args: argparse.Namespace, redis: Redis | None, report: Report) -> None:
    if redis is None:
        return
    prefix = f"bench:{os.getpid()}:"
    keys = RegistryKeys(prefix)
    scripts = ScriptBook(redis)
    pair = LanguagePair("en", "es")
    caps = NodeCapabilities(("en",), (pair,), ("es",), max_concurrency=1_000_000)
    await NodeRegistry(redis, keys, scripts).register(
        Registration("bench-node", caps), "bench", "bench", 600_000
    )
    store = JobStore(redis, JobKeys(prefix), keys, scripts, 60_000, 60_000)
    latencies = []
    started = time.perf_counter()
    for i in range(args.reservations):
        t0 = time.perf_counter()
        await store.reserve("bench-node", f"bench:{i}", 1)
        latencies.append(time.perf_counter() - t0)
        await store.release("bench-node", f"bench:{i}", 1)
    elapsed = time.perf_counter() - started
    await redis.delete(*[k async for k in redis.scan_iter(f"{prefix}*")])
    report.baselines["reservations_per_s"] = args.reservations / elapsed
    report.baselines["reservation_p50_ms"] = statistics.median(latencies) * 1000


def print_table(report: Report) -> None:
    rows = [("load", k, v) for k, v in report.load.items()] + [("idle", k, v) for k, v in report.idle.items()]
    rows += [("baseline", k, v) for k, v in report.baselines.items()]
    rows += [("ratio", k, v) for k, v in report.ratios.items()]
    width = max(len(k) for _, k, _ in rows)
    print(f"\n{'phase':<9} {'measure':<{width}} value")
    for phase, key, value in rows:
        print(
            f"{phase:<9} {key:<{width}} {value:,.3f}"
            if isinstance(value, float)
            else f"{phase:<9} {key:<{width}} {value}"
        )


async def run(args: argparse.Namespace) -> Report:
    report = Report(config={k: v for k, v in vars(args).items() if k != "func"})
    procs: list[Proc] = []
    scheduler: Proc | None = None
    holder: Proc | None = None  # the second instance, holding the nodes (--nodes-on-second-instance)
    holder_metrics_url = ""
    redis_url = args.redis_url
    metrics_url = args.metrics_url
    try:
        address = args.scheduler
        if not address:
            scheduler, line = spawn(
                [
                    str(BIN / "lingua-scheduler"),
                    "--listen",
                    "127.0.0.1:0",
                    "--metrics-port",
                    "0",
                    "--log-level",
                    "WARNING",
                    # Unless --user-defaults: long queue and gap timeouts, so a throughput run measures
                    # throughput rather than skips (the sweep runs the scheduler as users get it).
                    *(
                        ()
                        if args.user_defaults
                        else ("--session-queue-timeout-ms", "60000", "--session-gap-timeout-ms", "60000")
                    ),
                    *shlex.split(args.scheduler_args),
                ],
                "listening on",
                args.log_dir,
                "scheduler",
            )
            procs.append(scheduler)
            match = re.search(r"listening on (\S+) \(metrics (\S+), redis embedded (\S+)\)", line)
            assert match, line
            address, metrics_url, redis_url = match[1], match[2], match[3]
            node_address = address
            if args.nodes_on_second_instance:
                # A second instance on the same Redis holds every node stream: each job is handed off to it
                # and its node's answers handed back (the fleet's cross-instance path).
                holder, holder_line = spawn(
                    [
                        str(BIN / "lingua-scheduler"),
                        *("--listen", "127.0.0.1:0", "--metrics-port", "0", "--log-level", "WARNING"),
                        *("--redis-url", redis_url),
                        *shlex.split(args.scheduler_args),
                    ],
                    "listening on",
                    args.log_dir,
                    "holder",
                )
                procs.append(holder)
                held = re.search(r"listening on (\S+) \(metrics (\S+),", holder_line)
                assert held, holder_line
                node_address, holder_metrics_url = held[1], held[2]
            procs += [start_node(node_address, f"bench-{i}", args) for i in range(args.nodes)]
            await wait_for_nodes(address, args.nodes)
        redis = Redis.from_url(redis_url) if redis_url else None
        try:
            await load_phase(args, address, scheduler, redis, report, metrics_url)
            if holder is not None:
                jobs = max(report.load["utterances_completed"], 1)
                to_holder = await handoff_mean_ms(holder_metrics_url, "to_holder")
                to_owner = await handoff_mean_ms(metrics_url, "to_owner")
                report.load["handoff_to_holder_mean_ms"] = to_holder
                report.load["handoff_to_owner_mean_ms"] = to_owner
                report.load["holder_cpu_s_per_1000_jobs"] = holder.cpu_s() / jobs * 1000
            await idle_phase(args, address, scheduler, report)
            if not args.skip_baselines:
                # Each baseline where its ratio means something: the echo beside chunk ingest as fast as
                # possible, its idle streams beside idle sessions, the reservation loop beside job throughput.
                if not (args.realtime or args.whole_utterances):
                    await echo_baseline(args, report)
                await echo_idle_baseline(args, report)
                if args.whole_utterances:
                    await reservation_baseline(args, redis, report)
        finally:
            if redis is not None:
                await redis.aclose()
    finally:
        for proc in reversed(procs):
            proc.stop()
    if "echo_messages_per_s" in report.baselines:
        report.ratios["ingest_vs_echo"] = (
            report.load["chunks_per_s"] / report.baselines["echo_messages_per_s"]
        )
    if "echo_idle_stream_kib" in report.baselines and report.idle:
        report.ratios["idle_session_rss_vs_echo_stream"] = (
            report.idle["rss_per_session_kib"] / report.baselines["echo_idle_stream_kib"]
        )
    if "reservations_per_s" in report.baselines:
        report.ratios["jobs_vs_reservation_loop"] = (
            report.load["utterances_per_s"] / report.baselines["reservations_per_s"]
        )
    return report


def start_node(address: str, node_id: str, args: argparse.Namespace) -> Proc:
    popen = subprocess.Popen(
        [
            str(BIN / "lingua-node"),
            "--scheduler",
            address,
            "--node-id",
            node_id,
            "--pairs",
            "en-es",
            "--max-concurrency",
            str(args.node_concurrency),
            *(
                ("--asr", "faster-whisper", "--mt", "apertium", "--tts", "espeak-ng")
                if args.real_engines
                else ("--synthetic-latency-ms", str(args.node_latency_ms))
            ),
            "--log-level",
            "WARNING",
        ],
        stdout=subprocess.DEVNULL,
        stderr=_log_file(args.log_dir, node_id),
        text=True,
    )
    return Proc(popen)


async def wait_for_nodes(address: str, n: int, timeout_s: float = 30) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = registry_pb2_grpc.RegistryServiceStub(channel)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            snapshot = (await stub.GetSnapshot(registry_pb2.GetSnapshotRequest())).snapshot
            if len(snapshot.nodes) >= n:
                return
            await asyncio.sleep(0.05)  # nodes are still connecting
    raise SystemExit(f"lingua-bench: {n} nodes did not register within {timeout_s} s")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="lingua-bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--scheduler", default="", help="use a running scheduler (HOST:PORT) instead of starting one"
    )
    p.add_argument(
        "--redis-url", default="", help="its Redis, for command counts and the reservation baseline"
    )
    p.add_argument("--metrics-url", default="", help="its /metrics URL, for Redis round trips per job")
    p.add_argument("--nodes", type=int, default=4, help="synthetic node agents to start (default 4)")
    p.add_argument(
        "--real-engines",
        action="store_true",
        help="nodes of real engines (faster-whisper, Apertium, espeak-ng) fed English sentences spoken by"
        " espeak-ng, TTS on: reports each stage's real-time factor on this machine",
    )
    p.add_argument("--node-concurrency", type=int, default=64, help="max concurrency per node (default 64)")
    p.add_argument("--node-latency-ms", type=int, default=0, help="synthetic latency per stage (default 0)")
    p.add_argument("--sessions", type=int, default=100, help="concurrent sessions (default 100)")
    p.add_argument("--utterances", type=int, default=10, help="utterances per session (default 10)")
    p.add_argument(
        "--realtime",
        action="store_true",
        help="send audio at real-time pace (with --whole-utterances: one utterance per 1.2 s per session)",
    )
    p.add_argument(
        "--tts",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="sessions ask for synthesized speech (default on, as users get it; --no-tts: text only)",
    )
    p.add_argument(
        "--retry-refused-s",
        type=float,
        default=0.0,
        help="a session refused at start (RESOURCE_EXHAUSTED) tries again after the refusal's"
        " retry-after-ms (jittered) for up to this many seconds, as a client app would (default 0: never)",
    )
    p.add_argument(
        "--user-defaults",
        action="store_true",
        help="start the scheduler with its own defaults (otherwise its queue and gap timeouts are 60 s, so"
        " throughput runs measure throughput, not skips)",
    )
    sweep = p.add_argument_group(
        "offered-load sweep",
        "--sweep measures capacity (completed utterances/s of a burst, TTS on, admission on, the scheduler's"
        " defaults), then offers bursts and steady load at multiples of it, TTS on and off, each step on a"
        " fresh scheduler and nodes, and prints per step: offered, goodput, end to end p50/p99, refusals,"
        " skips by reason, re-dispatches, Redis memory per session, and every utterance's fate",
    )
    sweep.add_argument("--sweep", action="store_true", help="run the offered-load sweep")
    sweep.add_argument(
        "--capacity",
        type=float,
        default=0.0,
        help="utterances/s to take as capacity instead of measuring it (0: measure)",
    )
    sweep.add_argument(
        "--capacity-sessions",
        type=int,
        default=20,
        help="sessions of the capacity burst, each --burst-utterances (default 20)",
    )
    sweep.add_argument(
        "--multipliers", default="0.5,1,2,5", help="offered load, times capacity (default 0.5,1,2,5)"
    )
    sweep.add_argument("--shapes", default="burst,steady", help="burst, steady or both (default both)")
    sweep.add_argument("--tts-modes", default="on,off", help="on, off or both (default both, on first)")
    sweep.add_argument(
        "--burst-s",
        type=float,
        default=1.0,
        help="a burst is this many seconds of the offered rate, sent at once (default 1)",
    )
    sweep.add_argument(
        "--burst-utterances", type=int, default=20, help="whole utterances per burst session (default 20)"
    )
    sweep.add_argument(
        "--steady-s",
        type=float,
        default=4.8,
        help="steady load lasts this long: sessions of real-time whole utterances (one per 1.2 s each),"
        " as many as the rate needs, their starts spread over 1.2 s (default 4.8)",
    )
    p.add_argument(
        "--ramp-s", type=float, default=0.0, help="start the sessions spread evenly over this many seconds"
    )
    p.add_argument(
        "--scheduler-args",
        default="",
        help="extra flags for the scheduler this bench starts, e.g. '--overload-loop-lag-ms 0'",
    )
    p.add_argument(
        "--lockstep",
        action="store_true",
        help="real time: all sessions in phase, so their utterances end together (a burst test)",
    )
    p.add_argument("--chunk-ms", type=int, default=CHUNK_MS, help=f"audio per message (default {CHUNK_MS})")
    p.add_argument(
        "--whole-utterances",
        action="store_true",
        help="send each utterance as one final message (job throughput, not audio ingest)",
    )
    p.add_argument(
        "--idle-sessions", type=int, default=1000, help="idle sessions for the RSS measure (0: skip)"
    )
    p.add_argument("--echo-messages-per-stream", type=int, default=2000, help="cap of the echo baseline")
    p.add_argument(
        "--reservations", type=int, default=2000, help="reserve+release pairs in the Redis baseline"
    )
    p.add_argument(
        "--nodes-on-second-instance",
        action="store_true",
        help="start a second scheduler instance on the same Redis and connect the nodes to it: every job"
        " is handed off between instances (the fleet's cross-instance path)",
    )
    p.add_argument("--skip-baselines", action="store_true")
    p.add_argument("--json", metavar="PATH", help="write the report as JSON")
    p.add_argument(
        "--fates-file",
        metavar="PATH",
        default="",
        help="append every utterance's fate here, one JSON line each (run, session, index, fate: completed,"
        " skipped with its reason, refused, lost, answered_twice...; end_to_end_ms, attempt)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--log-dir", default="", help="keep the scheduler's and nodes' logs (WARNING and up) here")
    p.set_defaults(
        steady=False, run_label="run"
    )  # the sweep's steady steps: each session's first utterance at its start
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.fates_file:
        Path(args.fates_file).write_text("")
    if args.sweep:
        from lingua_grpc.bench._sweep import sweep  # here: it imports this module

        return sweep(args)
    report = asyncio.run(run(args))
    print_table(report)
    print(f"\nfates: {report.fates.summary()}")
    if args.json:
        Path(args.json).write_text(json.dumps(asdict(report), indent=2))
        print(f"\nwrote {args.json}")
    if not report.fates.ok:
        print(f"lingua-bench: FAILED: {report.fates.failure()}", file=sys.stderr)
        return 1
    return 0
