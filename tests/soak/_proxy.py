"""A TCP proxy the soak controls: in front of Redis for one scheduler instance, and between a node and its
schedulers. It can cut every connection (and refuse new ones for a while: a partition that resets), stall
(forward nothing, accept nothing, for a while: a partition that drops packets, healed with what was held),
or delay every byte by a fixed time (a slow network)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import time

_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() resets the connection, as a dead network does


class ChaosProxy:
    def __init__(self, name: str, target: str) -> None:
        self.name = name
        host, _, port = target.rpartition(":")
        self._target = (host, int(port))
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._open = asyncio.Event()  # set: bytes flow (cleared while stalled)
        self._open.set()
        self._refusing = False
        self.delay_s = 0.0
        self.address = ""

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.address = f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self.address

    # --- the faults -----------------------------------------------------------------------------------------

    def cut(self, refuse: bool = True) -> None:
        """Resets every connection now; while `refuse`, new ones are reset too (until `heal`)."""
        self._refusing = refuse
        for writer in list(self._writers):
            _reset(writer)
        self._writers.clear()

    def stall(self) -> None:
        """Forwards nothing and connects nothing until `heal` (what arrives meanwhile is held)."""
        self._open.clear()

    def delay(self, seconds: float) -> None:
        self.delay_s = seconds

    def heal(self) -> None:
        self._refusing = False
        self.delay_s = 0.0
        self._open.set()

    # --- forwarding -----------------------------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._refusing:
            _reset(writer)
            return
        await self._open.wait()
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            _reset(writer)
            return
        if self._refusing:
            _reset(writer)
            _reset(up_writer)
            return
        self._writers |= {writer, up_writer}
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(src, dst))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        writer = asyncio.create_task(self._write(queue, dst))
        try:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await src.read(65536):
                    queue.put_nowait((time.monotonic() + self.delay_s, data))
            queue.put_nowait((0.0, b""))  # end of stream
            with contextlib.suppress(OSError, asyncio.CancelledError):
                await writer
        finally:
            writer.cancel()
            self._writers.discard(dst)
            dst.close()

    async def _write(self, queue: asyncio.Queue[tuple[float, bytes]], dst: asyncio.StreamWriter) -> None:
        while True:
            due, data = await queue.get()
            if not data:
                return
            await self._open.wait()
            if (wait := due - time.monotonic()) > 0:
                await asyncio.sleep(wait)
            await self._open.wait()
            dst.write(data)
            await dst.drain()

    async def stop(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
        for task in list(self._tasks):
            task.cancel()


def _reset(writer: asyncio.StreamWriter) -> None:
    if (sock := writer.get_extra_info("socket")) is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
    writer.close()
