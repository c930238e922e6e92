"""SessionService. Live sessions arrive with the sessions work; until then Stream answers UNIMPLEMENTED."""

from __future__ import annotations

from typing import Any

import grpc

from lingua_grpc.pb import session_pb2_grpc


class SessionServicer(session_pb2_grpc.SessionServiceServicer):
    async def Stream(self, request_iterator: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:  # type: ignore[override]
        await context.abort(
            grpc.StatusCode.UNIMPLEMENTED, "live sessions are not available on this scheduler yet"
        )
