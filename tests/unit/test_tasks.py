"""StopBetweenSteps: a loop is stopped at once while idle, and only after the step in hand while busy."""

from __future__ import annotations

import asyncio

import pytest

from lingua_grpc.tasks import StopBetweenSteps


async def looping(
    guard: StopBetweenSteps,
    inputs: asyncio.Queue[asyncio.Event],
    done: list[str],
    in_step: asyncio.Event | None = None,
) -> None:
    guard.bind()
    while True:
        step_may_end = await inputs.get()
        with guard:
            if in_step is not None:
                in_step.set()
            await step_may_end.wait()  # a step between two writes that belong together
            done.append("step")


async def test_an_idle_loop_stops_at_once() -> None:
    guard, inputs, done = StopBetweenSteps(), asyncio.Queue[asyncio.Event](), list[str]()
    task = asyncio.create_task(looping(guard, inputs, done))
    await asyncio.sleep(0)  # let it start: it now waits for input
    guard.stop()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 1)
    assert done == []


async def test_a_busy_loop_finishes_its_step_then_stops() -> None:
    guard, inputs, done = StopBetweenSteps(), asyncio.Queue[asyncio.Event](), list[str]()
    in_step = asyncio.Event()
    task = asyncio.create_task(looping(guard, inputs, done, in_step))
    step = asyncio.Event()
    inputs.put_nowait(step)
    inputs.put_nowait(asyncio.Event())  # a next input that must not be taken
    await asyncio.wait_for(in_step.wait(), 1)
    guard.stop()
    assert not task.done()
    step.set()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 1)
    assert done == ["step"]
    assert inputs.qsize() == 1


async def test_stopped_before_it_started_the_loop_never_runs() -> None:
    guard, inputs, done = StopBetweenSteps(), asyncio.Queue[asyncio.Event](), list[str]()
    task = asyncio.create_task(looping(guard, inputs, done))
    guard.stop()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 1)
