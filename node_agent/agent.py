"""NodeAgent: connects to a scheduler, registers, heartbeats, runs jobs, drains.

One connection at a time: handshake first (register, then wait for `registered`), then a writer task that
owns the stream's write side, a heartbeat task, and the read loop dispatching on the oneof. When the stream
ends the agent reconnects with capped exponential backoff; a registration the scheduler refuses
(INVALID_ARGUMENT, FAILED_PRECONDITION) ends the agent with a clear error instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
from collections.abc import Coroutine
from dataclasses import dataclass, field
from functools import partial

import grpc

from lingua_grpc._grpc import read_message
from lingua_grpc.client import ChannelSecurity, open_channel
from lingua_grpc.pb import common_pb2, node_pb2, node_pb2_grpc
from node_agent.engines import Audio, Engine
from node_agent.gpu import GpuProbe, cpu_utilization

log = logging.getLogger(__name__)

FATAL_CODES = (
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
)


class RegistrationRefused(Exception):
    """The scheduler will not take this node as configured; retrying cannot help."""


@dataclass(frozen=True, slots=True)
class AgentConfig:
    scheduler: str
    node_id: str
    capabilities: common_pb2.NodeCapabilities
    security: ChannelSecurity = field(default_factory=ChannelSecurity)  # token and TLS
    reconnect_initial_s: float = 0.2
    reconnect_max_s: float = 10.0
    drain_timeout_s: float = 60.0
    # Fault injection for fault tests and drills (FAULTS); None runs jobs normally.
    fault: str | None = None
    fault_utterances: frozenset[int] | None = None  # None: every utterance

    @property
    def schedulers(self) -> list[str]:
        """`scheduler` is one HOST:PORT or several, comma-separated: the agent moves to the next when one
        fails. (A DNS name with several addresses is one entry: gRPC tries its addresses in turn.)"""
        return [a.strip() for a in self.scheduler.split(",") if a.strip()]

    def faulty(self, utterance_index: int) -> str | None:
        if self.fault is None or (
            self.fault_utterances is not None and utterance_index not in self.fault_utterances
        ):
            return None
        return self.fault


FAULTS = {
    "reject": "reject the job",
    "fail": "report the job failed (retryable)",
    "hang": "accept the job and never answer",
    "exit": "exit the process at once on receiving the job (a poison pill)",
    "drop-stream": "run the job, then drop the stream before sending the result",
}


@dataclass
class _Job:
    job_id: str
    attempt: int
    task: asyncio.Task[None] | None = None


@dataclass
class _Connection:
    call: grpc.aio.StreamStreamCall[node_pb2.ConnectRequest, node_pb2.ConnectResponse]
    outbox: asyncio.Queue[node_pb2.ConnectRequest] = field(default_factory=asyncio.Queue)

    def send(self, message: node_pb2.ConnectRequest) -> None:
        self.outbox.put_nowait(message)


class NodeAgent:
    def __init__(self, config: AgentConfig, engine: Engine, gpus: GpuProbe | None = None) -> None:
        self.config = config
        self.engine = engine
        self.gpus = gpus
        self._jobs: dict[str, _Job] = {}
        self._draining = asyncio.Event()
        self._drain_reason = ""
        self._connection: _Connection | None = None
        # Messages about jobs written while no stream is registered (between streams): sent, in order, on
        # the next stream once it is registered, whose Register lists these jobs as still held.
        self._held: list[node_pb2.ConnectRequest] = []
        self.registered = asyncio.Event()
        self._background: set[asyncio.Task[None]] = set()

    @property
    def running_jobs(self) -> int:
        return len(self._jobs)

    def drain(self, reason: str) -> None:
        """Stop taking jobs, finish running ones, leave the scheduler, and let `run()` return."""
        if self._draining.is_set():
            return
        log.info("draining", extra={"reason": reason, "running_jobs": self.running_jobs})
        self._drain_reason = reason
        self._draining.set()
        conn = self._connection
        if conn is not None:
            conn.send(node_pb2.ConnectRequest(draining=node_pb2.Draining(reason=reason)))
            self._spawn(self._leave_when_idle(conn))

    async def run(self) -> int:
        """Runs until drained (returns 0) or the registration is refused (returns 2)."""
        addresses = self.config.schedulers
        turn, failures = 0, 0
        while not self._draining.is_set():
            address = addresses[turn % len(addresses)]
            try:
                registered = await self._connect_once(address)
                failures = 0 if registered else failures + 1
            except RegistrationRefused as exc:
                log.error("registration refused: %s", exc)
                return 2
            if self._draining.is_set():
                break
            if len(addresses) > 1 or not registered:
                turn += 1  # the next scheduler; with one, the same one again
            # A lost stream is followed at once; failed attempts wait only once every address has failed.
            delay = 0.0 if failures < len(addresses) else self._backoff(failures - len(addresses) + 1)
            log.info(
                "reconnecting",
                extra={"scheduler": addresses[turn % len(addresses)], "in_s": round(delay, 3)},
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._draining.wait(), delay or 0.001)
        await self._wait_for_jobs()
        log.info("drained, exiting")
        return 0

    def _backoff(self, failures: int) -> float:
        ceiling = min(self.config.reconnect_max_s, self.config.reconnect_initial_s * 2 ** (failures - 1))
        return random.uniform(ceiling / 2, ceiling)

    async def _connect_once(self, address: str) -> bool:
        """One stream, from registration to its end. Returns whether registration succeeded."""
        registered = False
        async with open_channel(address, self.config.security) as channel:
            call = node_pb2_grpc.NodeServiceStub(channel).Connect()  # type: ignore[call-arg]
            conn = _Connection(call)
            writer: asyncio.Task[None] | None = None
            heartbeat: asyncio.Task[None] | None = None
            try:
                await call.write(
                    node_pb2.ConnectRequest(
                        register=node_pb2.Register(
                            node_id=self.config.node_id,
                            capabilities=self.config.capabilities,
                            running_jobs=[
                                node_pb2.RunningJob(job_id=job_id, attempt=attempt)
                                for job_id, attempt in self._holding()
                            ],
                        )
                    )
                )
                first: node_pb2.ConnectResponse | None = await read_message(call)
                if first is None or first.WhichOneof("kind") != "registered":
                    await call.code()  # surfaces the scheduler's status through the AioRpcError below
                    return False
                registered = True
                self.registered.set()
                interval_s = first.registered.heartbeat_interval_ms / 1000
                log.info(
                    "registered",
                    extra={
                        "scheduler": address,
                        "heartbeat_interval_ms": first.registered.heartbeat_interval_ms,
                        "lease_ms": first.registered.lease_ms,
                        "registry_version": first.registered.registry_version,
                    },
                )
                self._connection = conn
                held, self._held = self._held, []
                for kept in held:  # what jobs said while no stream was registered, first
                    conn.send(kept)
                writer = asyncio.create_task(self._write(conn), name="writer")
                heartbeat = asyncio.create_task(self._heartbeat(conn, interval_s), name="heartbeat")
                if self._draining.is_set():
                    conn.send(node_pb2.ConnectRequest(draining=node_pb2.Draining(reason=self._drain_reason)))
                    self._spawn(self._leave_when_idle(conn))
                while True:
                    try:
                        message: node_pb2.ConnectResponse | None = await read_message(call)
                    except asyncio.CancelledError:
                        task = asyncio.current_task()
                        if call.cancelled() and not (task and task.cancelling()):
                            log.warning("stream dropped by this agent")  # drop-stream fault
                            break
                        raise
                    if message is None or self._dispatch(conn, message):
                        break
                if not self._draining.is_set():
                    log.warning("scheduler closed the stream")
            except grpc.aio.AioRpcError as exc:
                if exc.code() in FATAL_CODES and not registered:
                    raise RegistrationRefused(f"{exc.code().name}: {exc.details()}") from None
                log.warning("stream ended", extra={"code": exc.code().name, "details": exc.details()})
            finally:
                if self._connection is conn:
                    # Job messages the stream did not take yet wait for the next one (results included).
                    while not conn.outbox.empty():
                        unsent = conn.outbox.get_nowait()
                        if unsent is not _DONE_WRITING and _job_of(unsent) is not None:
                            self._held.append(unsent)
                self._connection = None
                self.registered.clear()
                tasks = [t for t in (heartbeat, writer, *self._background) if t is not None]
                for task in tasks:
                    task.cancel()
                for result in await asyncio.gather(*tasks, return_exceptions=True):
                    if isinstance(result, Exception):
                        log.warning("connection task failed", extra={"error": repr(result)})
        return registered

    async def _write(self, conn: _Connection) -> None:
        try:
            while True:
                message = await conn.outbox.get()
                if message is _DONE_WRITING:
                    await conn.call.done_writing()
                    return
                await conn.call.write(message)
        except (asyncio.InvalidStateError, grpc.aio.AioRpcError):
            return  # the stream ended; the read loop reports why and the agent reconnects

    async def _heartbeat(self, conn: _Connection, interval_s: float) -> None:
        while True:
            conn.send(node_pb2.ConnectRequest(heartbeat=node_pb2.Heartbeat(load=self._load())))
            await asyncio.sleep(interval_s)

    def _load(self) -> common_pb2.NodeLoad:
        usage = self.gpus.usage() if self.gpus is not None else None
        return common_pb2.NodeLoad(
            running_jobs=self.running_jobs,
            gpu_utilization=usage.utilization if usage else 0.0,
            gpu_memory_used_bytes=usage.memory_used_bytes if usage else 0,
            cpu_utilization=cpu_utilization(),
        )

    def _dispatch(self, conn: _Connection, message: node_pb2.ConnectResponse) -> bool:
        """Acts on one scheduler message; True when this stream should end (to register again)."""
        kind = message.WhichOneof("kind")
        if kind == "assign_job":
            self._start_job(conn, message.assign_job)
        elif kind == "cancel_job":
            job = self._jobs.get(message.cancel_job.job_id)
            if job is not None and job.attempt == message.cancel_job.attempt and job.task is not None:
                log.info(
                    "job cancelled",
                    extra={"job_id": job.job_id, "attempt": job.attempt, "reason": message.cancel_job.reason},
                )
                job.task.cancel()
                del self._jobs[job.job_id]  # now: a newer attempt of the job may come next
        elif kind == "drain":
            self.drain(message.drain.reason or "scheduler request")
        elif kind == "reregister":
            log.warning("scheduler asks to register again", extra={"reason": message.reregister.reason})
            return True
        else:
            log.warning("unknown message from scheduler", extra={"kind": kind})
        return False

    def _start_job(self, conn: _Connection, assign: node_pb2.AssignJob) -> None:
        def reject(reason: node_pb2.RejectReason.ValueType, detail: str) -> None:
            conn.send(
                node_pb2.ConnectRequest(
                    job_rejected=node_pb2.JobRejected(
                        job_id=assign.job_id, attempt=assign.attempt, reason=reason, message=detail
                    )
                )
            )

        if self._draining.is_set():
            reject(node_pb2.REJECT_REASON_DRAINING, "node is draining")
        elif len(self._jobs) >= self.config.capabilities.max_concurrency:
            reject(node_pb2.REJECT_REASON_AT_CAPACITY, "all slots busy")
        elif assign.job_id in self._jobs:
            log.info("job already running", extra={"job_id": assign.job_id, "attempt": assign.attempt})
        elif (fault := self.config.faulty(assign.utterance_index)) in ("reject", "exit"):
            log.warning(
                "injected fault", extra={"fault": fault, "job_id": assign.job_id, "attempt": assign.attempt}
            )
            if fault == "exit":
                os._exit(3)
            reject(node_pb2.REJECT_REASON_UNSUPPORTED, "injected fault: reject")
        else:
            job = _Job(assign.job_id, assign.attempt)
            self._jobs[job.job_id] = job
            # Acknowledged on receipt, before the job's first step runs: a node that is busy (every slot
            # taken, the CPU saturated) still says at once that it has the job, which the scheduler counts
            # as having reached the node. Its slot bounds how many it holds, so none waits here.
            accepted = node_pb2.JobAccepted(job_id=assign.job_id, attempt=assign.attempt)
            self._send(node_pb2.ConnectRequest(job_accepted=accepted))
            log.info("job started", extra={"job_id": assign.job_id, "attempt": assign.attempt})
            job.task = asyncio.create_task(self._run_job(conn, assign), name=f"job-{assign.job_id}")
            job.task.add_done_callback(partial(self._forget_job, job))

    def _send(self, message: node_pb2.ConnectRequest) -> None:
        """Sends a job's message on the registered stream, or holds it for the next one (a job outlives the
        stream it came on: a reconnect lists it as still held and its messages follow)."""
        if self._connection is not None:
            self._connection.send(message)
        else:
            self._held.append(message)

    def _holding(self) -> list[tuple[str, int]]:
        """Job attempts this node holds: running, then finished with a result or failure not sent yet; at
        most max_concurrency (the scheduler refuses a longer list; an unlisted attempt just runs again). A
        rejection waiting to be sent is not held."""
        running = [(job.job_id, job.attempt) for job in self._jobs.values()]
        finished = [
            key
            for m in self._held
            if m.WhichOneof("kind") != "job_rejected" and (key := _job_of(m)) is not None
        ]
        return list(dict.fromkeys(running + finished))[: self.config.capabilities.max_concurrency]

    async def _run_job(self, conn: _Connection, a: node_pb2.AssignJob) -> None:
        ids: dict[str, object] = {"job_id": a.job_id, "attempt": a.attempt}
        fault = self.config.faulty(a.utterance_index)
        if fault is not None:
            log.warning("injected fault", extra={"fault": fault, "job_id": a.job_id, "attempt": a.attempt})
        if fault == "hang":
            await asyncio.Event().wait()
        if fault == "fail":
            failed = node_pb2.JobFailed(
                job_id=a.job_id, attempt=a.attempt, retryable=True, message="injected fault: fail"
            )
            self._send(node_pb2.ConnectRequest(job_failed=failed))
            return
        loop = asyncio.get_running_loop()
        pair = a.language_pair
        timings = common_pb2.StageTimings()
        stage = common_pb2.STAGE_ASR
        try:
            started = loop.time()
            audio = Audio(a.audio, a.audio_format.sample_rate_hz, a.audio_format.channels or 1)
            source_text = await self.engine.transcribe(audio, pair.source_language)
            timings.asr_ms = _ms_since(loop, started)
            self._send(_progress(a, stage, source_text, timings.asr_ms))
            stage, started = common_pb2.STAGE_TRANSLATION, loop.time()
            translated = await self.engine.translate(source_text, pair.source_language, pair.target_language)
            timings.translation_ms = _ms_since(loop, started)
            self._send(_progress(a, stage, translated, timings.translation_ms))
            result = node_pb2.JobResult(
                source_text=source_text, translated_text=translated, job_id=a.job_id, attempt=a.attempt
            )
            if common_pb2.STAGE_TTS in a.stages:
                stage, started = common_pb2.STAGE_TTS, loop.time()
                speech = await self.engine.synthesize(translated, pair.target_language)
                timings.tts_ms = _ms_since(loop, started)
                result.tts_audio = speech.data
                result.tts_audio_format.CopyFrom(
                    common_pb2.AudioFormat(
                        encoding=common_pb2.AUDIO_ENCODING_PCM_S16LE,
                        sample_rate_hz=speech.sample_rate_hz,
                        channels=speech.channels,
                    )
                )
            result.timings.CopyFrom(timings)
            if fault == "drop-stream":
                conn.call.cancel()  # the work is done, but the result never leaves
                return
            self._send(node_pb2.ConnectRequest(job_result=result))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("job failed", extra=ids)
            self._send(
                node_pb2.ConnectRequest(
                    job_failed=node_pb2.JobFailed(
                        retryable=True,
                        message=f"{type(exc).__name__}: {exc}",
                        stage=stage,
                        job_id=a.job_id,
                        attempt=a.attempt,
                    )
                )
            )

    def _forget_job(self, job: _Job, _task: object) -> None:
        if self._jobs.get(job.job_id) is job:
            del self._jobs[job.job_id]

    def _spawn(self, coro: Coroutine[None, None, None]) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _leave_when_idle(self, conn: _Connection) -> None:
        await self._wait_for_jobs()
        conn.outbox.put_nowait(_DONE_WRITING)

    async def _wait_for_jobs(self) -> None:
        tasks = [j.task for j in self._jobs.values() if j.task is not None]
        if not tasks:
            return
        _done, pending = await asyncio.wait(tasks, timeout=self.config.drain_timeout_s)
        for task in pending:
            task.cancel()
        if pending:
            log.warning("drain timeout: cancelled running jobs", extra={"cancelled": len(pending)})


_DONE_WRITING = node_pb2.ConnectRequest()  # sentinel: half-close the stream (leave cleanly)


def _progress(
    a: node_pb2.AssignJob, stage: common_pb2.Stage.ValueType, text: str, duration_ms: int
) -> node_pb2.ConnectRequest:
    progress = node_pb2.JobProgress(
        job_id=a.job_id, attempt=a.attempt, stage=stage, text=text, duration_ms=duration_ms
    )
    return node_pb2.ConnectRequest(job_progress=progress)


def _job_of(message: node_pb2.ConnectRequest) -> tuple[str, int] | None:
    """The (job id, attempt) a message is about, or None for a message about the node."""
    kind = message.WhichOneof("kind")
    if kind not in ("job_accepted", "job_rejected", "job_progress", "job_result", "job_failed"):
        return None
    about = getattr(message, kind)
    return about.job_id, about.attempt


def _ms_since(loop: asyncio.AbstractEventLoop, started: float) -> int:
    return int((loop.time() - started) * 1000)
