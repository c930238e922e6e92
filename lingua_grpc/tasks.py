"""Helpers for owned background tasks."""

from __future__ import annotations

import asyncio
import contextlib


def raise_if_cancelling() -> None:
    """Re-raises a cancellation that a library turned into another error.

    redis-py turns a cancellation that arrives during a blocking read into a ConnectionError; a retry
    loop that catches Redis errors would then carry on forever. Call this first in such handlers.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def cancel_and_wait(task: asyncio.Task[object] | asyncio.Task[None] | None) -> None:
    if task is None or task.done():
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
