"""How loaded this process's event loop is, and when that means new sessions must wait.

Two figures are sampled together (`watch_loop`), each `interval`:
- lag: how much later than asked a timer woke. Many milliseconds mean callbacks queue behind other work on the
  loop (or the process waits for a CPU): the delay every await pays (`lingua_event_loop_lag_seconds`).
- busy: the share of the interval the loop's thread was running or ready to run but waiting for a CPU
  (`lingua_event_loop_busy_ratio`; Linux's per-thread schedstat, else CPU time alone). Near 1 the loop has
  no slack: gRPC's completions, which reach the loop from its poller thread, start to queue and deliveries
  grow late while timers still look punctual. On a saturated instance it is the first to show, whether the
  loop itself is the bottleneck or the machine's CPUs are.

A third figure comes from the sessions: each result's delivery time (the scheduler's part of its latency, what
admission protects). On a machine whose CPUs are all taken the loop can look punctual and not busy while
deliveries queue in gRPC's completions; the delivery mean shows it.

`Saturation` turns the samples into admission: while any mean over its window is over its limit, new sessions
are refused (see SessionManager) and SessionService's health says NOT_SERVING.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from lingua_grpc.clock import Clock


class Signal(enum.Enum):
    LOOP_LAG = "loop_lag"  # seconds a timer woke late
    LOOP_BUSY = "loop_busy"  # share of the time the loop's thread ran (0 to 1)
    DELIVERY = "delivery"  # seconds from a node's result to its write to the client, per result


SCHEDSTAT = Path("/proc/thread-self/schedstat")


def thread_demand_s() -> float:
    """Seconds this thread has run or waited on a run queue (Linux schedstat); its CPU time elsewhere."""
    try:
        ran_ns, waited_ns, _ = SCHEDSTAT.read_text().split()
    except (OSError, ValueError):
        return time.thread_time()
    return (int(ran_ns) + int(waited_ns)) / 1e9


async def watch_loop(
    observe: Callable[[Signal, float], None],
    interval_s: float,
    demand_s: Callable[[], float] = thread_demand_s,
) -> None:
    """Samples lag and busy share of the running loop each `interval_s`, for ever."""
    loop = asyncio.get_running_loop()
    cpu, wall = demand_s(), loop.time()
    while True:
        asked = loop.time() + interval_s
        await asyncio.sleep(interval_s)
        now, used = loop.time(), demand_s()
        observe(Signal.LOOP_LAG, max(0.0, now - asked))
        if now > wall:
            observe(Signal.LOOP_BUSY, min(1.0, (used - cpu) / (now - wall)))
        cpu, wall = used, now


class _WindowMean:
    def __init__(self) -> None:
        self._samples: collections.deque[tuple[float, float]] = collections.deque()
        self._sum = 0.0

    def add(self, at: float, value: float) -> None:
        self._samples.append((at, value))
        self._sum += value

    def forget_before(self, at: float) -> None:
        while self._samples and self._samples[0][0] <= at:
            self._sum -= self._samples.popleft()[1]

    @property
    def mean(self) -> float:
        return self._sum / len(self._samples) if self._samples else 0.0


class Saturation:
    """Whether this instance is saturated: some signal's mean over the last `window_s` is over its limit
    (a limit of 0 turns that signal off). A mean, not one sample, so a lone GC pause refuses no one; held for
    at least a window once entered, so health and logs change at most once a window.

    Pure: `observe` takes each sample and reads the time from `clock`; `on_change(overloaded, why)` is called
    on each transition with a sentence for the log.
    """

    def __init__(
        self,
        clock: Clock,
        limits: Mapping[Signal, float],
        window_s: float,
        on_change: Callable[[bool, str], None] | None = None,
    ) -> None:
        if window_s <= 0:
            raise ValueError("the window must be positive")
        self._clock = clock
        self.limits = dict(limits)
        self.window_s = window_s
        self._on_change = on_change
        self._means = {signal: _WindowMean() for signal in Signal}
        self._entered_at = 0.0
        self.overloaded = False

    def mean(self, signal: Signal) -> float:
        return self._means[signal].mean

    def over(self) -> list[Signal]:
        """The signals over their limit now."""
        return [s for s, limit in self.limits.items() if limit > 0 and self.mean(s) > limit]

    def describe(self) -> str:
        def ms(signal: Signal) -> str:
            limit = self.limits.get(signal, 0)
            return f"{self.mean(signal) * 1000:.0f} ms (limit {limit * 1000:.0f})"

        busy, busy_limit = self.mean(Signal.LOOP_BUSY), self.limits.get(Signal.LOOP_BUSY, 0)
        return (
            f"event-loop lag {ms(Signal.LOOP_LAG)}, busy {busy:.0%} (limit {busy_limit:.0%}),"
            f" result delivery {ms(Signal.DELIVERY)}, means over the last {self.window_s * 1000:.0f} ms"
        )

    def observe(self, signal: Signal, value: float) -> None:
        now = self._clock.monotonic()
        self._means[signal].add(now, value)
        for mean in self._means.values():
            mean.forget_before(now - self.window_s)
        over = bool(self.over())
        if over and not self.overloaded:
            self.overloaded, self._entered_at = True, now
        elif not over and self.overloaded and now - self._entered_at >= self.window_s:
            self.overloaded = False
        else:
            return
        if self._on_change is not None:
            self._on_change(self.overloaded, self.describe())
