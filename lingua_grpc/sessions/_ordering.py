"""ResultSequencer: releases answers to the client in utterance order. Pure: time comes in as arguments.

Each utterance gets exactly one answer, a result or a skip, sent once all earlier indexes are answered. A
missing index that holds back a later ready answer for `gap_timeout_s` is skipped (GAP_TIMEOUT), so one lost
job never stalls the session; its late result is then dropped. Progress events pass straight through while
their utterance is unanswered, so they always come before its answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Generic, TypeVar

from lingua_grpc.jobs import SkipReason

R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class Answer(Generic[R]):
    index: int
    result: R | None = None  # None: skipped
    skip_reason: SkipReason | None = None
    message: str = ""


class ResultSequencer(Generic[R]):
    def __init__(self, gap_timeout_s: float, start: int = 0) -> None:
        """`start`: the first index to send (a resumed session's client has every answer before it)."""
        self._gap_timeout_s = gap_timeout_s
        self._next = start  # lowest index not yet sent
        self._expected = start  # indexes below this exist
        self._ready: dict[int, Answer[R]] = {}
        self._blocked_since: float | None = None

    @property
    def next_to_send(self) -> int:
        return self._next

    @property
    def all_answered(self) -> bool:
        return self._next >= self._expected

    def expect(self, index: int) -> None:
        self._expected = max(self._expected, index + 1)

    def unanswered(self, index: int) -> bool:
        return index >= self._next and index not in self._ready

    def complete(self, index: int, result: R, now: float) -> list[Answer[R]]:
        return self._add(Answer(index, result=result), now)

    def skip(self, index: int, reason: SkipReason, message: str, now: float) -> list[Answer[R]]:
        return self._add(Answer(index, skip_reason=reason, message=message), now)

    def _add(self, answer: Answer[R], now: float) -> list[Answer[R]]:
        if not self.unanswered(answer.index):
            return []  # already answered (a late result after a gap skip, or a duplicate)
        self.expect(answer.index)
        self._ready[answer.index] = answer
        return self._release(now)

    def on_tick(self, now: float) -> list[Answer[R]]:
        """Skips the missing head if it has held back ready answers for the gap timeout."""
        deadline = self.deadline
        if deadline is None or now < deadline:
            return []
        self._ready[self._next] = Answer(
            self._next,
            skip_reason=SkipReason.GAP_TIMEOUT,
            message=f"no result within {self._gap_timeout_s * 1000:.0f} ms while later utterances were ready",
        )
        return self._release(now)

    @property
    def deadline(self) -> float | None:
        """When the missing head will be skipped, if a later answer is waiting behind it."""
        if self._blocked_since is None:
            return None
        return self._blocked_since + self._gap_timeout_s

    def _release(self, now: float) -> list[Answer[R]]:
        out: list[Answer[R]] = []
        while self._next in self._ready:
            out.append(self._ready.pop(self._next))
            self._next += 1
        if self._ready and self._blocked_since is None:
            self._blocked_since = now
        elif not self._ready:
            self._blocked_since = None
        elif out:
            self._blocked_since = now  # the head moved: the new head gets a full gap timeout
        return out
