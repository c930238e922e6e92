"""Baseline: a bare grpc.aio bidirectional echo server, run as its own process like the scheduler.

python -m lingua_grpc.bench._echo   # prints "echo listening on HOST:PORT"
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc

METHOD = "/bench.Echo/Stream"


def _identity(data: bytes) -> bytes:
    return data


async def _echo(requests: AsyncIterator[bytes], context: object) -> AsyncIterator[bytes]:
    async for request in requests:
        yield request


async def serve() -> None:
    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler(
        "bench.Echo",
        {"Stream": grpc.stream_stream_rpc_method_handler(_echo, _identity, _identity)},
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"echo listening on 127.0.0.1:{port}", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(serve())
