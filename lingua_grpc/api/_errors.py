"""Turns domain errors raised inside a handler into gRPC statuses with their message."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc

from lingua_grpc.errors import LinguaError, status_for

RETRY_AFTER_KEY = "retry-after-ms"


@contextlib.asynccontextmanager
async def domain_errors(context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[None]:
    try:
        yield
    except LinguaError as exc:
        await context.abort(status_for(exc), str(exc), trailing_metadata(exc))


def trailing_metadata(error: LinguaError) -> tuple[tuple[str, str], ...]:
    """The error's retry hint as trailing metadata (`retry-after-ms`), or nothing."""
    if error.retry_after_ms is None:
        return ()
    return ((RETRY_AFTER_KEY, str(error.retry_after_ms)),)
