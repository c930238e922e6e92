"""Helpers for owned background tasks."""

from __future__ import annotations

import asyncio
import contextlib


def raise_if_cancelling() -> None:
    """Re-raises a cancellation that a library turned into another error.

    redis-py can swallow a cancellation that arrives during a command (turning it into a ConnectionError,
    or retrying and returning normally), after which the task never sees CancelledError. Loops that call
    Redis check this on every turn and in their error handlers, so `cancel()` always ends them.
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
