"""Async Python client for Lingua sessions.

    async with LinguaClient("127.0.0.1:50051", token="...", tls_ca="ca.pem") as client:
        session = await client.start_session("en", "es", sample_rate_hz=16000)
        await session.send_audio(pcm_bytes)
        await session.end()
        async for message in session:          # lingua.v1.StreamResponse: progress, result, skipped...
            if message.HasField("result"):
                print(message.result.translated_text)

`token` travels as `authorization: Bearer <token>` metadata; `tls_ca` (the CA that signed the scheduler's
certificate) turns TLS on, `tls_cert`/`tls_key` add a client certificate (mTLS). Errors arrive as
grpc.aio.AioRpcError with the scheduler's status code and message.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from types import TracebackType
from typing import Any

from lingua_grpc._grpc import read_message
from lingua_grpc.client._channel import MAX_MESSAGE_BYTES, ChannelSecurity, open_channel
from lingua_grpc.pb import common_pb2, session_pb2, session_pb2_grpc

__all__ = ["MAX_MESSAGE_BYTES", "ChannelSecurity", "LinguaClient", "Session", "open_channel"]


class Session:
    """One live session: send audio, then iterate over what the scheduler sends back."""

    def __init__(self, call: Any, started: session_pb2.SessionStarted) -> None:
        self._call = call
        self.started = started
        self._ended = False

    @property
    def session_id(self) -> str:
        return self.started.session_id

    async def send_audio(self, pcm: bytes, is_final: bool = False) -> None:
        await self._call.write(
            session_pb2.StreamRequest(audio=session_pb2.AudioChunk(data=pcm, is_final=is_final))
        )

    async def playback(self, playing: bool) -> None:
        await self._call.write(session_pb2.StreamRequest(playback=session_pb2.PlaybackState(playing=playing)))

    async def finalize(self) -> None:
        await self._call.write(session_pb2.StreamRequest(finalize=session_pb2.Finalize()))

    async def end(self) -> None:
        """No more audio: the scheduler answers every utterance, then ends the stream."""
        if not self._ended:
            self._ended = True
            await self._call.write(session_pb2.StreamRequest(end_of_stream=session_pb2.EndOfStream()))
            await self._call.done_writing()

    def cancel(self) -> None:
        self._call.cancel()

    async def __aiter__(self) -> AsyncIterator[session_pb2.StreamResponse]:
        while (message := await read_message(self._call)) is not None:
            yield message


class LinguaClient:
    def __init__(
        self,
        address: str,
        token: str = "",
        tls_ca: str = "",
        tls_cert: str = "",
        tls_key: str = "",
        options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        """`options`: more gRPC channel arguments (keepalive, `grpc.use_local_subchannel_pool` for a
        connection of its own rather than one shared with the process's other channels to `address`)."""
        self._channel = open_channel(address, ChannelSecurity(token, tls_ca, tls_cert, tls_key), options)
        self._stub = session_pb2_grpc.SessionServiceStub(self._channel)

    async def __aenter__(self) -> LinguaClient:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self._channel.close(None)

    async def start_session(
        self,
        source_language: str,
        target_language: str,
        sample_rate_hz: int = 16000,
        options: session_pb2.SessionOptions | None = None,
        client_name: str = "lingua_grpc.client",
    ) -> Session:
        call = self._stub.Stream()  # type: ignore[call-arg]
        await call.write(
            session_pb2.StreamRequest(
                start=session_pb2.SessionStart(
                    language_pair=common_pb2.LanguagePair(
                        source_language=source_language, target_language=target_language
                    ),
                    audio_format=common_pb2.AudioFormat(
                        encoding=common_pb2.AUDIO_ENCODING_PCM_S16LE,
                        sample_rate_hz=sample_rate_hz,
                        channels=1,
                    ),
                    options=options,
                    client_name=client_name,
                )
            )
        )
        first: session_pb2.StreamResponse | None = await read_message(call)
        if first is None or first.WhichOneof("kind") != "started":
            await call.code()
            raise RuntimeError("the scheduler ended the stream without starting the session")
        return Session(call, first.started)
