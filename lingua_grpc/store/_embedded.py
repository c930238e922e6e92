"""A private redis-server child process: the scheduler's default when no Redis URL is configured."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import shutil
import signal
import socket
import sys
import tempfile

from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    # Linux only: the child gets SIGTERM when its parent dies, even by SIGKILL, so no child (redis-server,
    # a --workers scheduler) is left behind holding a port.
    if sys.platform.startswith("linux"):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class EmbeddedRedis:
    """Starts `redis-server` on a free loopback port with persistence off; `stop()` ends it."""

    def __init__(
        self, server_path: str = "redis-server", host: str = "127.0.0.1", maxmemory_mb: int = 512
    ) -> None:
        self._maxmemory_mb = maxmemory_mb
        self._server_path = server_path
        self._host = host
        self._proc: asyncio.subprocess.Process | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"redis://{self._host}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    async def start(self, attempts: int = 3, ready_timeout_s: float = 10.0) -> str:
        binary = shutil.which(self._server_path)
        if binary is None:
            raise FileNotFoundError(
                f"{self._server_path} not found: install Redis (`make redis` or apt-get install redis-server)"
                " or set LINGUA_REDIS_URL"
            )
        for _ in range(attempts):  # the free port can be taken between choosing it and binding it
            self.port = free_port(self._host)
            # Its log goes to a file, not a pipe: nobody reads it while it runs, and a full pipe would block it.
            with tempfile.TemporaryFile() as server_log:
                self._proc = await asyncio.create_subprocess_exec(
                    binary,
                    *("--port", str(self.port), "--bind", self._host, "--save", "", "--appendonly", "no"),
                    *("--protected-mode", "yes", "--loglevel", "warning"),
                    # Bounded, and never evicting: a full Redis refuses writes (each refused utterance
                    # is skipped STORAGE_FULL) instead of silently dropping nodes, slots or jobs.
                    *("--maxmemory", f"{self._maxmemory_mb}mb", "--maxmemory-policy", "noeviction"),
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=server_log,
                    stderr=asyncio.subprocess.STDOUT,
                    preexec_fn=die_with_parent,
                )
                if await self._wait_ready(ready_timeout_s):
                    log.info("embedded redis-server started", extra={"redis_url": self.url, "pid": self.pid})
                    return self.url
                server_log.seek(0)
                output = server_log.read().decode(errors="replace").strip()
            log.warning("embedded redis-server did not start", extra={"output": output[-500:]})
            await self.stop()
        raise RuntimeError(f"embedded redis-server did not start after {attempts} attempts")

    async def _wait_ready(self, timeout_s: float) -> bool:
        assert self._proc is not None
        client = Redis(host=self._host, port=self.port, socket_connect_timeout=0.5)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        try:
            while loop.time() < deadline and self._proc.returncode is None:
                try:
                    if await client.ping():
                        return True
                except (RedisConnectionError, OSError):
                    await asyncio.sleep(0.02)  # the child is still starting: poll its port again
            return False
        finally:
            await client.aclose()

    async def stop(self, timeout_s: float = 5.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.returncode is not None:
            return
        proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), timeout_s)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        log.info("embedded redis-server stopped", extra={"redis_url": self.url})
