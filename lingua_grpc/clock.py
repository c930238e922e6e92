"""Time sources. Timer logic takes a `Clock` so tests can drive time by hand."""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds on a clock that never goes back; for durations and timers."""
        ...

    def now_ms(self) -> int:
        """Wall-clock milliseconds since the Unix epoch; for timestamps shown to people."""
        ...


class SystemClock:
    def monotonic(self) -> float:
        return time.monotonic()

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000


class ManualClock:
    """A clock that moves only when told to."""

    def __init__(self, start: float = 1000.0, epoch_ms: int = 1_700_000_000_000) -> None:
        self._t = start
        self._epoch_ms = epoch_ms

    def monotonic(self) -> float:
        return self._t

    def now_ms(self) -> int:
        return self._epoch_ms + int(self._t * 1000)

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("a clock does not go back")
        self._t += seconds
