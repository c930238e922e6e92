"""Channels to a scheduler with the caller's TLS and token: one place for the client library, the CLIs,
the node agent and the bench."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

MAX_MESSAGE_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class ChannelSecurity:
    """How to reach a scheduler: a bearer token and/or TLS (a CA to trust; a certificate for mTLS)."""

    token: str = ""
    tls_ca: str = ""  # PEM file of the CA that signed the scheduler's certificate; set: TLS
    tls_cert: str = ""  # PEM file of this caller's certificate (mTLS)
    tls_key: str = ""  # PEM file of its key (mTLS)

    @property
    def tls(self) -> bool:
        return bool(self.tls_ca or self.tls_cert)

    def check(self) -> None:
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("--tls-cert and --tls-key go together (a client certificate and its key)")
        for path in (self.tls_ca, self.tls_cert, self.tls_key):
            if path and not Path(path).is_file():
                raise ValueError(f"{path}: no such file")


def open_channel(
    target: str, security: ChannelSecurity | None = None, options: Sequence[tuple[str, Any]] = ()
) -> grpc.aio.Channel:
    """A channel to `target` (HOST:PORT), plaintext unless `security` asks for TLS; its token travels as
    `authorization: Bearer <token>` metadata on every call."""
    security = security or ChannelSecurity()
    security.check()
    opts = [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        *options,
    ]
    interceptors: Any = _token_interceptors(security.token) if security.token else None
    if security.tls:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=Path(security.tls_ca).read_bytes() if security.tls_ca else None,
            private_key=Path(security.tls_key).read_bytes() if security.tls_key else None,
            certificate_chain=Path(security.tls_cert).read_bytes() if security.tls_cert else None,
        )
        return grpc.aio.secure_channel(target, credentials, options=opts, interceptors=interceptors)
    return grpc.aio.insecure_channel(target, options=opts, interceptors=interceptors)


class _BearerToken:
    def __init__(self, token: str) -> None:
        self._metadata = ("authorization", f"Bearer {token}")

    def _with_token(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*(details.metadata or ()), self._metadata)
        return grpc.aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
        )


# grpc.aio files each interceptor under one kind of call only (the first base it matches), so each kind
# gets an object of its own.
class _UnaryUnaryToken(_BearerToken, grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._with_token(details), request)


class _UnaryStreamToken(_BearerToken, grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[type-arg]
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._with_token(details), request)


class _StreamUnaryToken(_BearerToken, grpc.aio.StreamUnaryClientInterceptor):  # type: ignore[type-arg]
    async def intercept_stream_unary(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return await continuation(self._with_token(details), request_iterator)


class _StreamStreamToken(_BearerToken, grpc.aio.StreamStreamClientInterceptor):  # type: ignore[type-arg]
    async def intercept_stream_stream(self, continuation: Any, details: Any, request_iterator: Any) -> Any:
        return await continuation(self._with_token(details), request_iterator)


def _token_interceptors(token: str) -> list[_BearerToken]:
    return [
        kind(token) for kind in (_UnaryUnaryToken, _UnaryStreamToken, _StreamUnaryToken, _StreamStreamToken)
    ]
