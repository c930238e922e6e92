"""SessionService: a thin loop over each client's stream; the session's logic lives in its actor."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import grpc

from lingua_grpc._grpc import read_first, read_message
from lingua_grpc.api import _convert as convert
from lingua_grpc.api._errors import domain_errors
from lingua_grpc.errors import (
    Aborted,
    FailedPrecondition,
    IdleTimeout,
    InvalidArgument,
    LinguaError,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
    status_for,
)
from lingua_grpc.pb import session_pb2, session_pb2_grpc
from lingua_grpc.security import current_principal, on_revoke
from lingua_grpc.sessions import (
    Closed,
    RecordedOut,
    ResultOut,
    SessionActor,
    SessionManager,
    SkippedOut,
    output_bytes,
)

Context = grpc.aio.ServicerContext[session_pb2.StreamRequest, session_pb2.StreamResponse]


class SessionServicer(session_pb2_grpc.SessionServiceServicer):
    def __init__(self, manager: SessionManager, max_chunk_bytes: int, idle_timeout_ms: int) -> None:
        self._manager = manager
        self._max_chunk_bytes = max_chunk_bytes
        self._idle_timeout_s = idle_timeout_ms / 1000

    async def Stream(self, request_iterator: Any, context: Context) -> None:  # type: ignore[override]
        first: session_pb2.StreamRequest = await read_first(context, "start", "SessionService.Stream")
        principal = current_principal()
        handler = asyncio.current_task()
        overflowed = False

        def overflow() -> None:  # the client stopped reading: end the stream now, wherever it waits
            nonlocal overflowed
            overflowed = True
            if handler is not None:
                handler.cancel()

        async with domain_errors(context):
            actor = await self._manager.open(
                convert.start_from_proto(first.start), principal.name, principal.max_sessions, overflow
            )
        on_revoke(lambda: actor.fail(Unauthenticated("credential revoked")))
        runner = asyncio.create_task(actor.run(), name=f"session-{actor.session_id}")
        reader = asyncio.create_task(self._read(context, actor), name=f"session-reader-{actor.session_id}")
        resumable = True  # until the session ends for good: a stream that breaks leaves it resumable
        try:
            await context.write(convert.started_to_proto(actor, self._manager.limits.max_outstanding))
            clock = self._manager.clock
            while not isinstance(out := await actor.outbox.get(), Closed):
                response = convert.output_to_proto(out)
                if isinstance(out, ResultOut):  # the scheduler's own delivery time, up to the write
                    delivery_s = clock.monotonic() - out.overhead.received_at
                    response.result.timings.scheduler_delivery_us = int(delivery_s * 1_000_000)
                    self._manager.delivered(delivery_s)
                elif isinstance(out, RecordedOut):
                    response.audio_recorded.resume_token = self._manager.fresh_token(actor)
                await context.write(response)
                if isinstance(out, ResultOut | SkippedOut):
                    actor.sent = out.index + 1
                actor.outbox_bytes -= output_bytes(out)
            # Over for good once the client said end_of_stream or erred; resumable when the scheduler is
            # stopping (the client resumes on another instance), another stream took the session over, or
            # the stream just ended.
            resumable = isinstance(out.error, Unavailable | Aborted) or (
                out.error is None and not actor.ended_by_client
            )
            if out.error is not None:
                await context.abort(status_for(out.error), str(out.error))
        except asyncio.CancelledError:
            if not overflowed or handler is None:
                raise
            resumable = False
            # The status is set, not sent with `abort`: a write the client never reads blocks the stream,
            # and the status can only follow it. The session is freed now; gRPC sends the status when the
            # client reads again, or drops the call when the client goes.
            handler.uncancel()
            context.set_code(grpc.StatusCode.RESOURCE_EXHAUSTED)
            context.set_details(
                f"the client did not read its results (over {self._manager.limits.outbox_max_bytes} bytes"
                " unread): the session was ended"
            )
        finally:
            # Close first, synchronously: the handler may be cancelled again while it waits below.
            reader.cancel()
            actor.stop()  # between events: a job it is placing is placed, then ended (the session closed)
            self._manager.close(actor, resumable)
            for task in (reader, runner):
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _read(self, context: Context, actor: SessionActor) -> None:
        try:
            async with asyncio.timeout(self._idle_timeout_s) as idle:
                await self._read_messages(context, actor, idle)
        except TimeoutError:
            actor.fail(
                IdleTimeout(
                    f"no message for {self._idle_timeout_s * 1000:.0f} ms: the session was closed (send"
                    " audio, or end the stream when done)"
                )
            )
        except LinguaError as exc:  # a message refused as it was read (over its bound, unparsed)
            actor.fail(exc, at_once=True)

    async def _read_messages(self, context: Context, actor: SessionActor, idle: asyncio.Timeout) -> None:
        loop = asyncio.get_running_loop()
        ended = False
        chunks = 0
        while True:
            message: session_pb2.StreamRequest | None = await read_message(context)
            # A message re-arms the idle deadline, at most once per tenth of it (not a new timer per
            # chunk): a session ends 0.9 to 1 idle timeout after its last message.
            now = loop.time()
            when = idle.when()
            if when is not None and now + self._idle_timeout_s - when > self._idle_timeout_s / 10:
                idle.reschedule(now + self._idle_timeout_s)
            if message is None:
                # A half-close without end_of_stream ends the stream the same way, but leaves the session
                # resumable: a client that went (cancelled, or its connection broke) may read as an end too.
                # Its open utterance is then cut there, and the audio it sends again on the resume is dropped
                # up to that cut, so nothing is answered twice.
                # Not while this instance stops: its streams end then (cancelled, which can read as an end),
                # and each client resumes elsewhere with the open utterance's audio, whole; cut here, its
                # first part would take the utterance's index and the rest the next one.
                if not ended and not context.cancelled() and self._manager.accepting:
                    actor.end_of_stream(said=False)
                return
            kind = message.WhichOneof("kind")
            if kind == "start":
                actor.fail(FailedPrecondition("`start` was already sent on this stream"))
                return
            if ended:
                if kind == "end_of_stream":  # said twice: changes nothing, loses nothing
                    continue
                actor.fail(FailedPrecondition(f"`{kind}` after `end_of_stream`"))
                return
            if kind == "audio":
                chunks += 1
                data = message.audio.data
                if len(data) % 2:
                    actor.fail(
                        InvalidArgument(
                            f"audio chunk {chunks} has {len(data)} bytes: send whole 16-bit samples"
                        )
                    )
                    return
                if len(data) > self._max_chunk_bytes:
                    actor.fail(
                        ResourceExhausted(
                            f"audio chunk {chunks} has {len(data)} bytes; the limit is {self._max_chunk_bytes}"
                        )
                    )
                    return
                await actor.audio(data, message.audio.is_final)
            elif kind == "playback":
                actor.playback(message.playback.playing)
            elif kind == "finalize":
                actor.finalize()
            elif kind == "end_of_stream":
                ended = True
                idle.reschedule(None)
                actor.end_of_stream()
