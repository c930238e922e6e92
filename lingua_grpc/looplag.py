"""How loaded this process's event loop is, and when that means new sessions must wait.

Two figures are sampled together (`watch_loop`), each `interval`:
- lag: how much later than asked a timer woke. Many milliseconds mean callbacks queue behind other work on the
  loop (or the process waits for a CPU): the delay every await pays (`lingua_event_loop_lag_seconds`).
- busy: the share of the interval the loop's thread was running or ready to run but waiting for a CPU
  (`lingua_event_loop_busy_ratio`; Linux's per-thread schedstat, else CPU time alone). Near 1 the loop has
  no slack: gRPC's completions, which reach the loop from its poller thread, start to queue and deliveries
  grow late while timers still look punctual. On a saturated instance it is the first to show, whether the
  loop itself is the bottleneck or the machine's CPUs are; a machine whose CPUs are all taken shows as
  waiting for a CPU.

Both are the whole instance's figures: no one caller can move them except by making the process work, and
what a caller can make it parse is bounded (security.MessageBounds). A result's delivery time is not among
them: it ends when the client's stream takes the message, so one client reading at its own pace would move
it; it stays a metric (`lingua_result_delivery_seconds`) and a field of each result's timings.

`Saturation` turns the samples into admission: while some signal was over its limit for most of its window
(by time, not by sample count), new sessions are refused (see SessionManager) and SessionService's health says
NOT_SERVING. One stall, however long its callback ran, covers only its own part of the window.
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


class _Window:
    """One signal's samples of the last window, each covering the time since the one before."""

    def __init__(self, since: float) -> None:
        self._samples: collections.deque[tuple[float, float, float]] = collections.deque()  # at, span, value
        self._sum = 0.0
        self._last = since

    def add(self, at: float, value: float) -> None:
        self._samples.append((at, max(0.0, at - self._last), value))
        self._last = at
        self._sum += value

    def forget_before(self, at: float) -> None:
        while self._samples and self._samples[0][0] <= at:
            self._sum -= self._samples.popleft()[2]

    @property
    def mean(self) -> float:
        return self._sum / len(self._samples) if self._samples else 0.0

    def time_over(self, limit: float, start: float) -> float:
        """The time since `start` covered by samples over `limit` (time not sampled yet counts as under)."""
        return sum(min(span, at - start) for at, span, value in self._samples if value > limit)


class Saturation:
    """Whether this instance is saturated: some signal was over its limit for at least `over_share` of the
    last `window_s` (a limit of 0 turns that signal off). Each sample covers the time since the one before,
    so a share of time, not of samples: one stall (a GC pause, one costly call), however late its sample,
    covers only the part of the window it took, and a loop stalled most of the time is saturated even
    though a stalled loop takes fewer samples. Held for at least a window once entered, so health and logs
    change at most once a window.

    Pure: `observe` takes each sample and reads the time from `clock`; `on_change(overloaded, why)` is called
    on each transition with a sentence for the log.
    """

    def __init__(
        self,
        clock: Clock,
        limits: Mapping[Signal, float],
        window_s: float,
        on_change: Callable[[bool, str], None] | None = None,
        over_share: float = 0.5,
    ) -> None:
        if window_s <= 0:
            raise ValueError("the window must be positive")
        if not 0 < over_share <= 1:
            raise ValueError("over_share must be above 0 and at most 1")
        self._clock = clock
        self.limits = dict(limits)
        self.window_s = window_s
        self.over_share = over_share
        self._on_change = on_change
        now = clock.monotonic()
        self._windows = {signal: _Window(now) for signal in Signal}
        self._entered_at = 0.0
        self.overloaded = False

    def mean(self, signal: Signal) -> float:
        return self._windows[signal].mean

    def share_over(self, signal: Signal) -> float:
        """The share of the last window during which `signal` was over its limit (0 for a signal off).
        Time before the first sample counts as under: a stall just after the start is one stall."""
        limit = self.limits.get(signal, 0)
        if limit <= 0:
            return 0.0
        over_s = self._windows[signal].time_over(limit, self._clock.monotonic() - self.window_s)
        return min(1.0, over_s / self.window_s)

    def over(self) -> list[Signal]:
        """The signals over their limit for at least `over_share` of the window now."""
        return [s for s, limit in self.limits.items() if limit > 0 and self.share_over(s) >= self.over_share]

    def describe(self) -> str:
        lag, lag_limit = self.mean(Signal.LOOP_LAG), self.limits.get(Signal.LOOP_LAG, 0)
        busy, busy_limit = self.mean(Signal.LOOP_BUSY), self.limits.get(Signal.LOOP_BUSY, 0)
        return (
            f"event-loop lag {lag * 1000:.0f} ms (limit {lag_limit * 1000:.0f}) over for"
            f" {self.share_over(Signal.LOOP_LAG):.0%}, busy {busy:.0%} (limit {busy_limit:.0%}) over for"
            f" {self.share_over(Signal.LOOP_BUSY):.0%}; means and shares of the last"
            f" {self.window_s * 1000:.0f} ms, saturated at {self.over_share:.0%}"
        )

    def observe(self, signal: Signal, value: float) -> None:
        now = self._clock.monotonic()
        self._windows[signal].add(now, value)
        for window in self._windows.values():
            window.forget_before(now - self.window_s)
        over = bool(self.over())
        if over and not self.overloaded:
            self.overloaded, self._entered_at = True, now
        elif not over and self.overloaded and now - self._entered_at >= self.window_s:
            self.overloaded = False
        else:
            return
        if self._on_change is not None:
            self._on_change(self.overloaded, self.describe())
