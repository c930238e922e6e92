"""The soak's clients: workers that hold sessions at microphone pace one after another (each a client of its
own that resumes across the fleet's addresses, `lingua_grpc.client`), and bursts of short sessions that send
whole utterances at once. Every utterance is a tone no other utterance of the run has (its pitch follows
its number; its crc32 is checked unique), so a result's ASR text, which names the crc32 of the audio the node
heard, says which utterance it carries."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import zlib
from dataclasses import dataclass, field

import grpc
import numpy as np

from lingua_grpc.client import LinguaClient, Reconnect
from lingua_grpc.pb import session_pb2

RATE = 16000
CHUNK_MS = 100
RESUME = Reconnect(within_s=60, first_wait_s=0.05, max_wait_s=1.0)
# Utterances end on is_final only: the arrival-gap pause is as long as the client may ask (a client slowed by
# a busy machine must not split an utterance; the checker maps results to utterances by their exact audio).
OPTIONS = session_pb2.SessionOptions(pause_ms=10000, max_utterance_ms=15000)


@dataclass
class Utterance:
    index: int
    crc: int
    ms: int
    sent_end_at: float = 0.0  # monotonic: its final chunk was written


@dataclass
class Answer:
    index: int
    kind: str  # "result" or the skip reason's name
    at: float
    text: str = ""
    attempt: int = 0
    node: str = ""
    message: str = ""


@dataclass
class SessionLog:
    key: str  # "w3.2" (worker 3's third session), "b1.17" (burst 1's 18th)
    kind: str  # "main" | "burst"
    session_id: str = ""
    utterances: list[Utterance] = field(default_factory=list)
    answers: list[Answer] = field(default_factory=list)
    ended: str = ""  # "ok", or the status that ended it: "NOT_FOUND: ..."
    refused: str = ""  # the start was refused (RESOURCE_EXHAUSTED...): nothing sent
    resumes: int = 0
    started_at: float = 0.0
    stalled_reading: bool = False


class Audio:
    """Unique tones: the n-th utterance of the run has a pitch of its own; the crc32 of every one is kept."""

    def __init__(self) -> None:
        self.owner: dict[int, tuple[str, int]] = {}  # crc32 -> (session key, index)

    def make(self, session_key: str, index: int, number: int, ms: int) -> tuple[bytes, int]:
        freq = 180.0 + (number % 4000) * 0.37
        amplitude = 6000 + (number // 4000) % 2000
        while True:
            t = np.arange(RATE * ms // 1000) / RATE
            pcm = (amplitude * np.sin(2 * np.pi * freq * t)).astype("<i2").tobytes()
            crc = zlib.crc32(pcm)
            if crc not in self.owner:
                self.owner[crc] = (session_key, index)
                return pcm, crc
            amplitude += 1


def _chunks(pcm: bytes) -> list[bytes]:
    step = 2 * RATE * CHUNK_MS // 1000
    return [pcm[i : i + step] for i in range(0, len(pcm), step)]


def _status(exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    return repr(exc)[:300]


def _record(log: SessionLog, m: session_pb2.StreamResponse) -> None:
    now = time.monotonic()
    if m.HasField("result"):
        r = m.result
        log.answers.append(Answer(r.utterance_index, "result", now, r.source_text, r.attempt, r.node_id))
    elif m.HasField("skipped"):
        s = m.skipped
        reason = session_pb2.SkipReason.Name(s.reason).removeprefix("SKIP_REASON_")
        log.answers.append(Answer(s.utterance_index, reason, now, message=s.message))


class Clients:
    def __init__(self, addresses: list[str], seed: int, audio: Audio) -> None:
        self.addresses = addresses
        self.seed = seed
        self.audio = audio
        self.logs: list[SessionLog] = []
        self._number = 0
        self._stop = asyncio.Event()
        self._reading: dict[str, asyncio.Event] = {}
        self._bursts = 0
        self.burst_tasks: list[asyncio.Task[None]] = []

    def next_number(self) -> int:
        self._number += 1
        return self._number

    def stop(self) -> None:
        """Workers finish the utterance they are sending, end their sessions and read every answer."""
        self._stop.set()

    def stall_reader(self, worker: str, seconds: float) -> None:
        gate = self._reading.get(worker)
        if gate is None:
            return
        gate.clear()
        asyncio.get_running_loop().call_later(seconds, gate.set)

    async def worker(self, w: int) -> None:
        name = f"w{w}"
        rng = random.Random(self.seed * 1000 + w)
        gate = self._reading.setdefault(name, asyncio.Event())
        gate.set()
        order = [self.addresses[(w + k) % len(self.addresses)] for k in range(len(self.addresses))]
        n = 0
        while not self._stop.is_set():
            log = SessionLog(f"{name}.{n}", "main")
            self.logs.append(log)
            n += 1
            await self._main_session(log, order, rng, gate)
            await asyncio.sleep(rng.uniform(0.2, 1.0))

    async def _main_session(
        self, log: SessionLog, order: list[str], rng: random.Random, gate: asyncio.Event
    ) -> None:
        utterances = rng.randint(6, 24)
        options = [("grpc.use_local_subchannel_pool", 1)]  # a connection of its own, as a phone has
        async with LinguaClient(order, reconnect=RESUME, options=options) as client:
            log.started_at = time.monotonic()
            session = None
            for attempt in range(60):  # a start refused (every instance full, Redis away): try again
                try:
                    session = await client.start_session("en", "es", options=OPTIONS)
                    break
                except grpc.aio.AioRpcError as exc:
                    log.refused = _status(exc)
                    await asyncio.sleep(min(0.1 * 2**attempt, 2.0))
            if session is None:
                return
            log.refused = ""
            log.session_id = session.session_id

            async def send() -> None:
                for index in range(utterances):
                    if self._stop.is_set():
                        break
                    ms = rng.randrange(500, 2000, 100)
                    pcm, crc = self.audio.make(log.key, index, self.next_number(), ms)
                    utterance = Utterance(index, crc, ms)
                    log.utterances.append(utterance)
                    pieces = _chunks(pcm)
                    for k, piece in enumerate(pieces):
                        await session.send_audio(piece, is_final=k == len(pieces) - 1)
                        await asyncio.sleep(CHUNK_MS / 1000)  # microphone pace
                    utterance.sent_end_at = time.monotonic()
                    await asyncio.sleep(rng.uniform(0.2, 1.5))  # the speaker pauses (nothing is sent)
                await session.end()

            async def read() -> None:
                async for m in session:
                    if not gate.is_set():
                        log.stalled_reading = True
                        await gate.wait()
                    _record(log, m)

            sender = asyncio.create_task(send())
            try:
                await read()
                log.ended = "ok"
            except Exception as exc:
                log.ended = _status(exc)
            finally:
                if not sender.done():
                    sender.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await sender
                log.resumes = session.resumes
                if log.ended == "ok" and len(log.answers) < len(log.utterances):
                    log.ended = "ok (stream ended before every answer)"

    def burst(self, sessions: int) -> asyncio.Task[None]:
        self._bursts += 1
        task = asyncio.create_task(self._burst(self._bursts, sessions))
        self.burst_tasks.append(task)
        return task

    async def _burst(self, b: int, sessions: int) -> None:
        async with LinguaClient(self.addresses, reconnect=RESUME) as client:
            await asyncio.gather(
                *(self._burst_session(client, SessionLog(f"b{b}.{i}", "burst")) for i in range(sessions))
            )

    async def _burst_session(self, client: LinguaClient, log: SessionLog) -> None:
        """Four whole utterances written at once, then the answers."""
        self.logs.append(log)
        log.started_at = time.monotonic()
        try:
            session = await client.start_session("en", "es", options=OPTIONS)
        except grpc.aio.AioRpcError as exc:
            log.refused = _status(exc)
            return
        log.session_id = session.session_id
        try:
            for index in range(4):
                ms = 300 + 100 * index
                pcm, crc = self.audio.make(log.key, index, self.next_number(), ms)
                log.utterances.append(Utterance(index, crc, ms))
                await session.send_audio(pcm, is_final=True)
                log.utterances[-1].sent_end_at = time.monotonic()
            await session.end()
            async for m in session:
                _record(log, m)
            log.ended = "ok"
        except Exception as exc:
            log.ended = _status(exc)
        log.resumes = session.resumes
