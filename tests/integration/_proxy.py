"""A TCP forwarder between a client and a scheduler, whose connections the test can cut: a network that
drops, as a client sees it (the stream fails UNAVAILABLE), while the scheduler goes on."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct

_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() resets the connection, as a dead network does


class CuttableLink:
    def __init__(self, target: str) -> None:
        host, _, port = target.rpartition(":")
        self._target = (host, int(port))
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.address = ""
        self.refusing = False  # down: new connections are closed at once, as by a host that is gone
        # Replies lost: a request holding these bytes reaches the target, whose answer is dropped and the
        # connection reset (a network that fails between a request and its reply); None: none lost.
        self.swallow_replies_to: bytes | None = None

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.address = f"127.0.0.1:{port}"
        return self.address

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            writer.close()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}
        marked = [False]  # this connection sent a request whose reply is to be lost
        for src, dst, replies in ((reader, up_writer, False), (up_reader, writer, True)):
            task = asyncio.create_task(self._pipe(src, dst, replies, marked))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(
        self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, replies: bool, marked: list[bool]
    ) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await src.read(65536):
                marker = self.swallow_replies_to
                if not replies and marker is not None and marker in data:
                    marked[0] = True
                if replies and marked[0]:
                    _reset(dst)
                    return
                dst.write(data)
                await dst.drain()
        dst.close()

    def cut(self) -> None:
        """Drops every connection through the link now (new ones still pass)."""
        for writer in list(self._writers):
            _reset(writer)
        self._writers.clear()

    def down(self) -> None:
        """Cuts every connection and refuses new ones until `up`."""
        self.refusing = True
        self.cut()

    def up(self) -> None:
        self.refusing = False

    async def stop(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()


def _reset(writer: asyncio.StreamWriter) -> None:
    if (sock := writer.get_extra_info("socket")) is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
    writer.close()
