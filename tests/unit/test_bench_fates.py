"""lingua-bench's accounting: every utterance sent is answered once (a result or a skip), or the run fails."""

from __future__ import annotations

import grpc
import pytest

from lingua_grpc.bench._fates import Ledger, account, fate_rows
from lingua_grpc.bench._main import retry_after_s

pytestmark = pytest.mark.unit


def test_every_utterance_answered_once_is_accounted_for_by_fate() -> None:
    a = Ledger("a", planned=3, sent=3)
    a.result(0)
    a.skipped(1, "NO_CAPACITY")
    a.result(2)
    b = Ledger("b", planned=2, sent=2)
    b.skipped(0, "FAILED")
    b.skipped(1, "NO_CAPACITY")
    refused = Ledger("c", planned=5, refused=True)
    fates = account([a, b, refused])
    assert fates.ok and fates.failure() == ""
    assert (fates.sent, fates.completed, fates.skipped) == (5, 2, {"NO_CAPACITY": 2, "FAILED": 1})
    assert fates.sent == fates.completed + fates.skipped_total
    assert (fates.sessions, fates.sessions_refused, fates.refused_utterances) == (3, 1, 5)
    assert "sent 5 = completed 2 + skipped 3 (FAILED 1, NO_CAPACITY 2)" in fates.summary()
    assert "refused sessions 1 of 3 (5 utterances not sent)" in fates.summary()


def test_an_utterance_neither_answered_nor_skipped_fails_the_run() -> None:
    ledger = Ledger("s1", planned=3, sent=3)
    ledger.result(0)
    ledger.result(2)
    fates = account([ledger])
    assert not fates.ok
    assert fates.lost == 1 and fates.unaccounted == ["s1#1: no answer"]
    assert fates.failure().startswith("utterances neither answered once nor skipped (1 faults): s1#1")


def test_an_utterance_answered_twice_fails_the_run() -> None:
    ledger = Ledger("s1", planned=2, sent=2)
    ledger.result(0)
    ledger.result(1)
    ledger.skipped(1, "GAP_TIMEOUT")
    fates = account([ledger])
    assert not fates.ok and fates.duplicated == 1
    assert fates.unaccounted == ["s1#1: answered 2 times (result x1, skipped GAP_TIMEOUT)"]


def test_a_broken_stream_loses_what_it_had_not_answered_and_what_it_never_sent() -> None:
    ledger = Ledger("s1", planned=4, sent=2, error="UNAVAILABLE: gone")
    ledger.result(0)
    fates = account([ledger])
    assert (fates.sessions_failed, fates.lost, fates.not_sent) == (1, 1, 2)
    assert fates.unaccounted == [
        "s1: 2 of 4 utterances not sent (stream ended UNAVAILABLE: gone)",
        "s1#1: no answer (stream ended UNAVAILABLE: gone)",
    ]


def test_answers_for_utterances_never_sent_fail_the_run() -> None:
    ledger = Ledger("s1", planned=1, sent=1)
    ledger.result(0)
    ledger.result(7)
    refused = Ledger("s2", planned=1, refused=True)
    refused.result(0)
    fates = account([ledger, refused])
    assert fates.answered_unsent == 2
    assert fates.unaccounted == ["s1#7: answered, never sent", "s2: refused, yet answered"]


def test_every_utterance_gets_one_row_with_its_fate() -> None:
    ledger = Ledger("s1", planned=4, sent=3, error="UNAVAILABLE: gone")
    ledger.result(0)
    ledger.attempts[0], ledger.latency_ms[0] = 2, 12.345
    ledger.skipped(1, "NO_CAPACITY")
    ledger.result(5)
    rows = list(fate_rows(ledger)) + list(fate_rows(Ledger("s2", planned=2, refused=True)))
    assert rows == [
        {"session": "s1", "index": 0, "fate": "completed", "end_to_end_ms": 12.3, "attempt": 2},
        {"session": "s1", "index": 1, "fate": "skipped", "reason": "NO_CAPACITY"},
        {"session": "s1", "index": 2, "fate": "lost", "stream_error": "UNAVAILABLE: gone"},
        {"session": "s1", "index": 3, "fate": "not_sent", "stream_error": "UNAVAILABLE: gone"},
        {"session": "s1", "index": 5, "fate": "answered_unsent"},
        {"session": "s2", "index": 0, "fate": "refused"},
        {"session": "s2", "index": 1, "fate": "refused"},
    ]


def test_a_refused_session_retries_after_the_schedulers_hint() -> None:
    def refusal(*trailers: tuple[str, str]) -> grpc.aio.AioRpcError:
        return grpc.aio.AioRpcError(
            grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.aio.Metadata(), grpc.aio.Metadata(*trailers), "full", ""
        )

    assert retry_after_s(refusal(("retry-after-ms", "400"))) == 0.4
    assert retry_after_s(refusal()) == 1.0
    assert retry_after_s(refusal(("retry-after-ms", "soon")), default_s=2.0) == 2.0


def test_failed_starts_are_shown_and_cost_nothing_once_a_retry_started_the_session() -> None:
    retried = Ledger("s1", planned=1, sent=1, start_errors=["INTERNAL"])
    retried.result(0)
    failed = Ledger("s2", planned=2, start_errors=["CANCELLED", "CANCELLED"], error="CANCELLED at start: x")
    fates = account([retried, failed])
    assert fates.start_errors == {"INTERNAL": 1, "CANCELLED": 2}
    assert "starts failed, not refused: CANCELLED 2, INTERNAL 1" in fates.summary()
    assert fates.unaccounted == ["s2: 2 of 2 utterances not sent (stream ended CANCELLED at start: x)"]
