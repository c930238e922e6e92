"""A session that survives its stream: when the connection breaks or the scheduler dies, it reconnects (to the
same or the next address, with backoff) and resumes, as session.proto's `Stream` describes: it keeps the
latest resume token, the index of the first answer it has not received, and every audio chunk sent after
the last `AudioRecorded`; on a resume it sends those chunks again, so nothing spoken is lost and every answer
arrives once, in order.

Flow control: a session started by `LinguaClient.start_session` sets `SessionOptions.wait_for_room` unless
told otherwise, so the scheduler, not this client, keeps the session's window of outstanding utterances
(`SessionStarted.max_outstanding_utterances`). Only the scheduler can: it alone sees where utterances are cut,
and the audio already written may hold utterances nobody has heard of yet. While the window is full it reads
none of the session's audio, so `send_audio` waits (gRPC flow control) instead of outrunning it, and no
utterance is skipped SESSION_BACKLOG however fast a recording is sent. gRPC's buffers alone would still let
megabytes of audio through before a write waits, so while the session is being iterated `send_audio` also
waits while the audio sent past the last `AudioRecorded` reaches the longest utterance plus a second
(`max_utterance_ms` + 1 s): that bounds the audio kept for a resume and sent again with it. The bound never
holds the client back mid-utterance long enough for the scheduler to take the wait for a pause: audio that
long holds a cut (an utterance ends at `max_utterance_ms`), so the wait ends with its `AudioRecorded`, or
the scheduler is holding the session at its window, right after a cut, with no speech open. Iterate over the
session while sending: answers are what make room, and a client that does not read them is ended once its
unread results pass the scheduler's bound. `outstanding` and `window` say where the session stands."""

from __future__ import annotations

import asyncio
import collections
import logging
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc

from lingua_grpc._grpc import read_message
from lingua_grpc.pb import session_pb2

log = logging.getLogger(__name__)

# A stream that ends with one of these is resumed: the connection or the scheduler went away (grpcio reports
# a write that fails on a broken connection as INTERNAL). Any other status is the session's own end (a bad
# request, a limit, the session taken over elsewhere) and is raised; so is a resume the scheduler refuses
# (the session ended, or is gone from the store).
RESUMABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.INTERNAL,
    }
)


@dataclass(frozen=True, slots=True)
class Reconnect:
    """How a session reconnects: for at most `within_s` after its stream broke (0: never), waiting between
    tries from `first_wait_s` doubling to `max_wait_s`, with jitter."""

    within_s: float = 30.0
    first_wait_s: float = 0.05
    max_wait_s: float = 2.0


@dataclass(slots=True)
class _Kept:
    offset: int  # position of the chunk's first sample in the session's audio
    pcm: bytes
    is_final: bool


class Session:
    """One live session: send audio, then iterate over what the scheduler sends back (StreamResponse
    messages: progress, result, skipped, audio_recorded, warning). Resumes on its own across broken streams."""

    def __init__(
        self,
        open_call: Callable[[int], Any],
        addresses: int,
        first_address: int,
        call: Any,
        started: session_pb2.SessionStarted,
        reconnect: Reconnect,
    ) -> None:
        self._open_call = open_call  # address index -> a new Stream call
        self._addresses = addresses
        self._address = first_address
        self._call = call
        self.started = started
        self._reconnect = reconnect
        self.resume_token = started.resume_token
        self.next_index = 0  # first utterance whose answer has not arrived
        self.utterances_cut = 0  # utterances before the last AudioRecorded (its next_utterance_index)
        self.recorded_samples = started.audio_offset  # the last AudioRecorded's audio_offset
        self._kept: collections.deque[_Kept] = collections.deque()
        self._sent_samples = 0
        self._iterating = False  # someone reads the stream: AudioRecorded will come, so sending may wait
        self._recorded = asyncio.Event()  # set when recorded_samples moves (or reading stops)
        self._ended = False
        self._playing = False  # the last playback state sent (sent again on a resume while true)
        self._lock = asyncio.Lock()  # writes, and a resume's start + resend, one at a time
        self.resumes = 0  # how many times the session was resumed on a new stream

    @property
    def session_id(self) -> str:
        return self.started.session_id

    @property
    def window(self) -> int:
        """How many of the session's utterances may wait or run at once (0: a scheduler that does not say)."""
        return self.started.max_outstanding_utterances

    @property
    def outstanding(self) -> int:
        """The session's utterances cut (as far as the scheduler recorded its audio) whose answer has not
        arrived yet. At most `window` while the session waits for room."""
        return max(0, self.utterances_cut - self.next_index)

    @property
    def sent_samples(self) -> int:
        """Audio handed to `send_audio` so far, in samples (a write that waits for room counts once done)."""
        return self._sent_samples

    @property
    def kept_bytes(self) -> int:
        """Audio kept for a resume: sent, and not yet recorded by the scheduler."""
        return sum(len(k.pcm) for k in self._kept)

    async def send_audio(self, pcm: bytes, is_final: bool = False) -> None:
        """Sends a chunk (whole 16-bit samples). Waits while the scheduler holds the session's audio back
        (its window of outstanding utterances is full, see the module's doc)."""
        await self._room_for_audio()
        async with self._lock:
            kept = _Kept(self._sent_samples, pcm, is_final)
            self._sent_samples += len(pcm) // 2
            if self._reconnect.within_s > 0:
                self._kept.append(kept)
            await self._write(session_pb2.StreamRequest(audio=_chunk(kept)))

    async def _room_for_audio(self) -> None:
        """Waits while the audio sent past the last AudioRecorded is at its bound (the module's doc); not
        while nobody reads the stream (nothing would end the wait), nor before the session says its options."""
        o, rate = self.started.options, self.started.audio_format.sample_rate_hz
        if not o.max_utterance_ms or not rate:
            return
        limit = rate * (o.max_utterance_ms + 1000) // 1000
        while self._iterating and self._sent_samples - self.recorded_samples >= limit:
            self._recorded.clear()
            await self._recorded.wait()

    async def playback(self, playing: bool) -> None:
        async with self._lock:
            self._playing = playing
            await self._write(session_pb2.StreamRequest(playback=session_pb2.PlaybackState(playing=playing)))

    async def finalize(self) -> None:
        """Ends the current utterance now (kept like an empty final chunk, to be sent again on a resume)."""
        await self.send_audio(b"", is_final=True)

    async def end(self) -> None:
        """No more audio: the scheduler answers every utterance, then ends the stream."""
        async with self._lock:
            if self._ended:
                return
            self._ended = True
            await self._write(session_pb2.StreamRequest(end_of_stream=session_pb2.EndOfStream()))
            if not self._call.done():
                try:
                    await self._call.done_writing()
                except (grpc.aio.AioRpcError, asyncio.InvalidStateError, grpc.aio.UsageError):
                    if self._reconnect.within_s <= 0:
                        raise  # else: the resume ends the new stream's writing

    def cancel(self) -> None:
        self._call.cancel()

    async def __aiter__(self) -> AsyncIterator[session_pb2.StreamResponse]:
        self._iterating = True
        try:
            while True:
                call = self._call
                try:
                    message = await read_message(call)
                except grpc.aio.AioRpcError as exc:
                    if not await self._resume_after(call, exc):
                        raise
                    continue
                if message is None:
                    return
                self._note(message)
                yield message
        finally:
            self._iterating = False
            self._recorded.set()  # a sender waiting for AudioRecorded would wait for good

    def _note(self, message: session_pb2.StreamResponse) -> None:
        kind = message.WhichOneof("kind")
        if kind == "result":
            self.next_index = max(self.next_index, message.result.utterance_index + 1)
        elif kind == "skipped":
            self.next_index = max(self.next_index, message.skipped.utterance_index + 1)
        elif kind == "audio_recorded":
            recorded = message.audio_recorded
            if recorded.resume_token:
                self.resume_token = recorded.resume_token
            self.recorded_samples = max(self.recorded_samples, recorded.audio_offset)
            self.utterances_cut = max(self.utterances_cut, recorded.next_utterance_index)
            self._recorded.set()
            # Everything before the recorded position is in an utterance the fleet has (or was silence): an
            # empty final marker there had nothing left to end.
            while self._kept and self._kept[0].offset + len(self._kept[0].pcm) // 2 <= recorded.audio_offset:
                self._kept.popleft()

    async def _write(self, request: session_pb2.StreamRequest) -> None:
        """Writes on the current stream; a stream that broke is left to the resume (what was kept is sent
        again then), so a write never fails for a broken connection while resuming is on."""
        try:
            await self._call.write(request)
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError, grpc.aio.UsageError) as exc:
            if self._reconnect.within_s <= 0:
                raise
            log.debug("write on a broken stream; the resume sends it again", extra={"error": repr(exc)})

    async def _resume_after(self, failed: Any, error: grpc.aio.AioRpcError) -> bool:
        """Resumes the session on a new stream, unless `error` ends it for good or resuming is off or took too
        long. False: the caller raises `error`."""
        if error.code() not in RESUMABLE or self._reconnect.within_s <= 0 or not self.resume_token:
            return False
        async with self._lock:
            if self._call is not failed:
                return True  # a writer already resumed it
            loop = asyncio.get_running_loop()
            give_up_at = loop.time() + self._reconnect.within_s
            wait_s = self._reconnect.first_wait_s
            last: grpc.aio.AioRpcError = error
            while loop.time() < give_up_at:
                self._address = (self._address + 1) % self._addresses
                try:
                    await self._resume_on(self._address)
                    return True
                except grpc.aio.AioRpcError as exc:
                    last = exc
                    if exc.code() not in RESUMABLE | {grpc.StatusCode.RESOURCE_EXHAUSTED}:
                        raise  # refused for good (token expired, session gone...): the caller sees why
                await asyncio.sleep(min(wait_s, max(0.0, give_up_at - loop.time())) * random.uniform(0.5, 1))
                wait_s = min(wait_s * 2, self._reconnect.max_wait_s)
            log.warning("session not resumed in time", extra={"session_id": self.session_id})
            raise last

    async def _resume_on(self, address: int) -> None:
        call = self._open_call(address)
        kept_from = self._kept[0].offset if self._kept else self._sent_samples
        await call.write(
            session_pb2.StreamRequest(
                start=session_pb2.SessionStart(
                    resume_token=self.resume_token,
                    next_utterance_index=self.next_index,
                    audio_offset=kept_from,
                )
            )
        )
        first: session_pb2.StreamResponse | None = await read_message(call)
        if first is None or first.WhichOneof("kind") != "started":
            call.cancel()
            raise grpc.aio.AioRpcError(
                grpc.StatusCode.UNAVAILABLE,
                grpc.aio.Metadata(),
                grpc.aio.Metadata(),
                "the scheduler ended the stream without resuming the session",
                "",
            )
        self.started = first.started
        self.resume_token = first.started.resume_token or self.resume_token
        self.recorded_samples = max(self.recorded_samples, first.started.audio_offset)
        if self._playing:  # a new stream starts with playback off
            await call.write(session_pb2.StreamRequest(playback=session_pb2.PlaybackState(playing=True)))
        for kept in list(self._kept):
            await call.write(session_pb2.StreamRequest(audio=_chunk(kept)))
        if self._ended:
            await call.write(session_pb2.StreamRequest(end_of_stream=session_pb2.EndOfStream()))
            await call.done_writing()
        self._call = call
        self.resumes += 1
        log.info(
            "session resumed",
            extra={"session_id": self.session_id, "next_utterance_index": self.next_index},
        )


def _chunk(kept: _Kept) -> session_pb2.AudioChunk:
    return session_pb2.AudioChunk(data=kept.pcm, is_final=kept.is_final)
