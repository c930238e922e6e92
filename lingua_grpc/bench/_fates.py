"""Every utterance's fate: what a bench run sent, and what became of each one.

A session's ledger records the utterances it sent and each answer it got (a result, or a skip with its
reason). `account` sums the ledgers of a run; an utterance that was sent but neither answered nor skipped is
*unaccounted*, and so is a second answer for one utterance: either fails the run (the scheduler promises one
answer per utterance, in order). Sessions refused at start (admission) sent nothing: their utterances are
counted apart, as refused, never as lost. Pure: no I/O, unit-tested on its own.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Ledger:
    """One session of a bench run: its utterances sent and their answers, as the client saw them."""

    name: str
    planned: int  # utterances the session meant to send
    refused: bool = False  # refused at start (RESOURCE_EXHAUSTED): nothing sent
    sent: int = 0  # utterances sent, indexes 0 .. sent - 1
    results: collections.Counter[int] = field(default_factory=collections.Counter)
    skips: dict[int, list[str]] = field(default_factory=dict)  # index -> reasons (more than one: a duplicate)
    error: str = ""  # the stream's end when it was not OK (e.g. "UNAVAILABLE: ...")
    start_errors: list[str] = field(default_factory=list)  # statuses of failed starts (not refusals)
    latency_ms: dict[int, float] = field(default_factory=dict)  # index -> audio sent to answer, client side
    attempts: dict[int, int] = field(default_factory=dict)  # index -> attempt that produced the result

    def result(self, index: int) -> None:
        self.results[index] += 1

    def skipped(self, index: int, reason: str) -> None:
        self.skips.setdefault(index, []).append(reason)


@dataclass
class Fates:
    """A run's utterances by fate: sent = completed + skipped (by reason) + lost + answered twice."""

    sessions: int = 0
    sessions_refused: int = 0
    sessions_failed: int = 0  # streams that ended with an error status
    start_errors: dict[str, int] = field(default_factory=dict)  # failed starts (retried or not), by status
    sent: int = 0
    completed: int = 0
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count
    refused_utterances: int = 0  # utterances of refused sessions: never sent
    # Utterances of admitted sessions never sent (their stream failed first): lost to their speaker, so
    # unaccounted too (one entry per session).
    not_sent: int = 0
    lost: int = 0  # sent, and never answered
    duplicated: int = 0  # sent, and answered more than once
    answered_unsent: int = 0  # answers for utterances that were never sent
    unaccounted: list[str] = field(default_factory=list)  # "session#index: what went wrong", one per fault

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())

    @property
    def ok(self) -> bool:
        return not self.unaccounted

    def summary(self) -> str:
        """One line: sent = completed + skipped by reason + unaccounted (refused sessions apart)."""
        reasons = ", ".join(f"{r} {n}" for r, n in sorted(self.skipped.items())) or "none"
        line = (
            f"sent {self.sent} = completed {self.completed} + skipped {self.skipped_total} ({reasons})"
            f" + lost {self.lost} + answered twice {self.duplicated}; refused sessions"
            f" {self.sessions_refused} of {self.sessions} ({self.refused_utterances} utterances not sent)"
        )
        if self.answered_unsent:
            line += f"; {self.answered_unsent} answers for utterances never sent"
        if self.start_errors:
            errors = ", ".join(f"{code} {n}" for code, n in sorted(self.start_errors.items()))
            line += f"; starts failed, not refused: {errors}"
        if self.not_sent:
            line += f"; {self.not_sent} utterances never sent (their streams failed)"
        return line

    def failure(self, limit: int = 10) -> str:
        """The message a run that lost utterances fails with ('' when every utterance is accounted for)."""
        if self.ok:
            return ""
        shown = "; ".join(self.unaccounted[:limit])
        more = f" (and {len(self.unaccounted) - limit} more)" if len(self.unaccounted) > limit else ""
        return (
            f"utterances neither answered once nor skipped ({len(self.unaccounted)} faults): {shown}{more}."
            f" {self.summary()}"
        )


def account(ledgers: Iterable[Ledger]) -> Fates:
    """Sums the ledgers of a run, and lists every utterance that was not answered exactly once."""
    fates = Fates()
    skipped: collections.Counter[str] = collections.Counter()
    start_errors: collections.Counter[str] = collections.Counter()
    for ledger in ledgers:
        fates.sessions += 1
        start_errors.update(ledger.start_errors)
        if ledger.refused:
            fates.sessions_refused += 1
            fates.refused_utterances += ledger.planned
            if ledger.results or ledger.skips:
                fates.answered_unsent += sum(ledger.results.values()) + sum(map(len, ledger.skips.values()))
                fates.unaccounted.append(f"{ledger.name}: refused, yet answered")
            continue
        if ledger.error:
            fates.sessions_failed += 1
        fates.sent += ledger.sent
        if ledger.planned > ledger.sent:
            fates.not_sent += ledger.planned - ledger.sent
            fates.unaccounted.append(
                f"{ledger.name}: {ledger.planned - ledger.sent} of {ledger.planned} utterances not sent"
                f" (stream ended {ledger.error or 'early'})"
            )
        for index in range(ledger.sent):
            answers = ledger.results[index] + len(ledger.skips.get(index, ()))
            if answers == 1:
                if ledger.results[index]:
                    fates.completed += 1
                else:
                    skipped[ledger.skips[index][0]] += 1
                continue
            if answers == 0:
                fates.lost += 1
                why = f"no answer (stream ended {ledger.error})" if ledger.error else "no answer"
            else:
                fates.duplicated += 1
                what = [f"result x{ledger.results[index]}"] * bool(ledger.results[index])
                what += [f"skipped {r}" for r in ledger.skips.get(index, ())]
                why = f"answered {answers} times ({', '.join(what)})"
            fates.unaccounted.append(f"{ledger.name}#{index}: {why}")
        extra = sorted(i for i in set(ledger.results) | set(ledger.skips) if i >= ledger.sent or i < 0)
        for index in extra:
            fates.answered_unsent += 1
            fates.unaccounted.append(f"{ledger.name}#{index}: answered, never sent")
    fates.skipped = dict(skipped)
    fates.start_errors = dict(start_errors)
    return fates


def fate_rows(ledger: Ledger) -> Iterator[dict[str, Any]]:
    """One row per utterance of the session (and per answer for one never sent): its fate, the skip's
    reason, the client's end to end and the attempt of its result. Fates: completed, skipped, refused (the
    session was), not_sent, lost, answered_twice, answered_unsent."""
    base: dict[str, Any] = {"session": ledger.name}
    if ledger.refused:
        for index in range(ledger.planned):
            yield {**base, "index": index, "fate": "refused"}
        return
    for index in range(max(ledger.planned, ledger.sent)):
        row = {**base, "index": index}
        results, skips = ledger.results[index], ledger.skips.get(index, [])
        if index >= ledger.sent:
            row["fate"] = "not_sent"
        elif results + len(skips) > 1:
            row["fate"] = "answered_twice"
        elif results:
            row["fate"] = "completed"
        elif skips:
            row |= {"fate": "skipped", "reason": skips[0]}
        else:
            row["fate"] = "lost"
        if index in ledger.latency_ms:
            row["end_to_end_ms"] = round(ledger.latency_ms[index], 1)
        if index in ledger.attempts:
            row["attempt"] = ledger.attempts[index]
        if ledger.error and row["fate"] in ("lost", "not_sent"):
            row["stream_error"] = ledger.error
        yield row
    for index in sorted(i for i in set(ledger.results) | set(ledger.skips) if i >= ledger.sent or i < 0):
        yield {**base, "index": index, "fate": "answered_unsent"}
