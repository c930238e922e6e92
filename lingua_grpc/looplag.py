"""Event-loop lag: how late a timer callback runs, the delay every await on this loop pays when busy.

One task sleeps `interval` and records how much later than asked it woke. A lag of many milliseconds means
callbacks queue behind other work on the loop (or the process waits for a CPU); it is the first figure to
read when dispatch or delivery latency grows under load (`lingua_event_loop_lag_seconds`).
"""

from __future__ import annotations

import asyncio
from typing import Protocol


class Observer(Protocol):
    def observe(self, amount: float) -> None: ...


async def watch_loop_lag(histogram: Observer, interval_s: float) -> None:
    loop = asyncio.get_running_loop()
    while True:
        asked = loop.time() + interval_s
        await asyncio.sleep(interval_s)
        histogram.observe(max(0.0, loop.time() - asked))
