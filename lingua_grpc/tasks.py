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


class StopBetweenSteps:
    """Stops a loop task only between its steps.

    A step may sit between two Redis writes that belong together (a slot reserved and the job started with
    it, a result recorded and handed on); cancelling it there would lose the second half. `stop()` cancels
    the task at once while it waits for its next input, and otherwise lets the step in hand finish and ends
    the loop right after it (with CancelledError, as a cancel would).

        guard = StopBetweenSteps()
        # in the loop task:          # elsewhere:
        guard.bind()                 guard.stop()
        while True:
            item = await next_input()
            with guard:
                await handle(item)
    """

    def __init__(self) -> None:
        self._task: asyncio.Task[object] | None = None
        self._busy = False
        self._stopped = False

    def bind(self) -> None:
        """Called by the loop task itself, once, before its first step."""
        self._task = asyncio.current_task()
        if self._stopped:
            raise asyncio.CancelledError

    def stop(self) -> None:
        self._stopped = True
        if not self._busy and self._task is not None:
            self._task.cancel()

    def __enter__(self) -> None:
        self._busy = True

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        self._busy = False
        if self._stopped and kind is None:
            raise asyncio.CancelledError
