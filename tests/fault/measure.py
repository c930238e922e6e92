"""Measures recovery per fault with the drill settings: `python -m tests.fault.measure`.

For each fault it prints what the client saw and the worst utterance latency (utterance end -> result,
`timings.total_ms`), which includes detecting the fault and re-dispatching. Not a test: figures for the
README table.
"""

from __future__ import annotations

import asyncio
import signal
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from tests.fault._drill import Drill, answers, results, utterances

Scenario = Callable[[Drill], Awaitable[str]]


def summary(messages: list) -> str:  # type: ignore[type-arg]
    got = answers(messages)
    worst = max((r.timings.total_ms for r in results(messages)), default=0)
    kinds = ", ".join(f"#{i} {k.replace('SKIP_REASON_', 'skipped ')}" for i, k in got)
    return f"{kinds} | worst utterance end -> result {worst} ms"


async def baseline(d: Drill) -> str:
    await d.start()
    await d.node("a")
    return summary(await d.session(utterances(3)))


async def node_killed(d: Drill) -> str:
    await d.start()
    doomed = await d.node("doomed", "--synthetic-latency-ms", "400")
    await d.node("survivor", "--synthetic-latency-ms", "400")
    session = asyncio.create_task(d.session(utterances(3)))
    await doomed.log_contains("job started")
    doomed.send(signal.SIGKILL)
    return summary(await session)


async def node_stopped(d: Drill) -> str:
    await d.start()
    zombie = await d.node("zombie", "--synthetic-latency-ms", "400")
    await d.node("healthy", "--synthetic-latency-ms", "400")
    session = asyncio.create_task(d.session(utterances(3)))
    await zombie.log_contains("job started")
    zombie.send(signal.SIGSTOP)
    out = summary(await session)
    zombie.send(signal.SIGCONT)
    return out


async def fault(d: Drill, mode: str) -> str:
    await d.start()
    await d.node("faulty", "--inject-fault", mode)
    await d.node("good")
    return summary(await d.session(utterances(3)))


async def poison(d: Drill) -> str:
    await d.start()
    for i in range(4):
        await d.node(f"n{i}", "--inject-fault", "exit", "--fault-utterances", "1", max_concurrency=1)
    return summary(await d.session(utterances(3)))


async def redis_restart(d: Drill, keep: bool) -> str:
    s = await d.start()
    await d.node("a")
    session = asyncio.create_task(d.session(utterances(4), pace_s=0.05))
    await asyncio.sleep(0.5)
    d.restart_redis(keep)
    started = time.monotonic()
    await s.log_contains("redis reachable again")
    back = (time.monotonic() - started) * 1000
    return f"{summary(await session)} | serving again {back:.0f} ms after the restart"


SCENARIOS: dict[str, Scenario] = {
    "no fault (baseline)": baseline,
    "node kill -9 mid-job": node_killed,
    "node SIGSTOP past its lease": node_stopped,
    "node rejects every job": lambda d: fault(d, "reject"),
    "node hangs (accepts, never answers)": lambda d: fault(d, "hang"),
    "node drops its stream before the result": lambda d: fault(d, "drop-stream"),
    "poison job kills every node it reaches": poison,
    "redis restart, data kept": lambda d: redis_restart(d, True),
    "redis restart, data lost": lambda d: redis_restart(d, False),
}


async def main() -> None:
    for name, scenario in SCENARIOS.items():
        with tempfile.TemporaryDirectory() as tmp:
            drill = Drill(Path(tmp))
            try:
                print(f"{name}: {await scenario(drill)}", flush=True)
            finally:
                drill.close()


if __name__ == "__main__":
    asyncio.run(main())
