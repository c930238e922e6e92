"""Small helpers over grpc.aio that its type stubs lack."""

from __future__ import annotations

from typing import Any

import grpc

EOF_MARKER: Any = grpc.aio.EOF  # type: ignore[attr-defined]


async def read_message(stream: Any) -> Any:
    """The next message of a stream (a call or a servicer context), or None at its end."""
    message = await stream.read()
    return None if message is EOF_MARKER else message


async def read_first(context: Any, kind: str, rpc: str) -> Any:
    """The stream's first message, which must carry `kind` (its oneof); otherwise the call ends with
    FAILED_PRECONDITION and a message saying what came instead."""
    first = await read_message(context)
    if first is None or first.WhichOneof("kind") != kind:
        got = "end of stream" if first is None else f"`{first.WhichOneof('kind')}`"
        await context.abort(
            grpc.StatusCode.FAILED_PRECONDITION, f"the first message on {rpc} must be `{kind}`, got {got}"
        )
    return first
