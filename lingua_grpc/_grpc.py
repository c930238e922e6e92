"""Small helpers over grpc.aio that its type stubs lack."""

from __future__ import annotations

from typing import Any

import grpc

EOF_MARKER: Any = grpc.aio.EOF  # type: ignore[attr-defined]


async def read_message(stream: Any) -> Any:
    """The next message of a stream (a call or a servicer context), or None at its end."""
    message = await stream.read()
    return None if message is EOF_MARKER else message
