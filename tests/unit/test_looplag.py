"""The event-loop lag metric shows a loop that is kept busy."""

from __future__ import annotations

import asyncio
import time

from lingua_grpc.looplag import watch_loop_lag
from lingua_grpc.tasks import cancel_and_wait


class Samples:
    def __init__(self) -> None:
        self.values: list[float] = []
        self.changed = asyncio.Event()

    def observe(self, amount: float) -> None:
        self.values.append(amount)
        self.changed.set()

    async def wait_for(self, count: int) -> None:
        while len(self.values) < count:
            self.changed.clear()
            await self.changed.wait()


def hold_the_loop(seconds: float) -> None:
    time.sleep(seconds)  # a callback that keeps the loop busy, as a CPU-heavy handler would


async def test_a_callback_that_holds_the_loop_shows_up_as_lag() -> None:
    samples = Samples()
    watcher = asyncio.create_task(watch_loop_lag(samples, 0.005))
    try:
        await asyncio.wait_for(samples.wait_for(3), 5)
        assert max(samples.values) < 0.1  # an idle loop: small lag
        seen = len(samples.values)
        asyncio.get_running_loop().call_soon(hold_the_loop, 0.15)
        await asyncio.wait_for(samples.wait_for(seen + 1), 5)
        assert max(samples.values[seen:]) >= 0.1
    finally:
        await cancel_and_wait(watcher)
