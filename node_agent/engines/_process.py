"""Running an engine's command-line tool off the event loop: a subprocess per call, killed when the job is
cancelled."""

from __future__ import annotations

import asyncio
import contextlib


class ToolError(RuntimeError):
    """The tool exited with an error (its status and what it printed to stderr are in the message)."""


async def run_tool(*argv: str, stdin: bytes = b"") -> bytes:
    """The tool's standard output. A cancelled call kills the tool at once."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await proc.communicate(stdin)
    except asyncio.CancelledError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        with contextlib.suppress(Exception):
            await proc.wait()
        raise
    if proc.returncode != 0:
        detail = err.decode(errors="replace").strip()[-500:]
        raise ToolError(f"{argv[0]} exited with status {proc.returncode}: {detail}")
    return out
