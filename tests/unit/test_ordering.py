import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lingua_grpc.sessions import ResultSequencer, SkipReason

pytestmark = pytest.mark.unit


def test_results_arriving_out_of_order_are_sent_in_order() -> None:
    seq: ResultSequencer[str] = ResultSequencer(gap_timeout_s=5)
    for i in range(3):
        seq.expect(i)
    assert seq.complete(2, "c", now=0) == []
    assert seq.complete(1, "b", now=0) == []
    sent = seq.complete(0, "a", now=0)
    assert [(a.index, a.result) for a in sent] == [(0, "a"), (1, "b"), (2, "c")]
    assert seq.all_answered


def test_missing_index_is_skipped_after_gap_timeout_only_when_it_blocks() -> None:
    seq: ResultSequencer[str] = ResultSequencer(gap_timeout_s=2)
    seq.expect(0)
    assert seq.deadline is None, "nothing waits behind index 0: no gap timer"
    seq.expect(1)
    seq.complete(1, "b", now=10)
    assert seq.deadline == 12
    assert seq.on_tick(11.9) == []
    sent = seq.on_tick(12)
    assert [(a.index, a.skip_reason) for a in sent] == [(0, SkipReason.GAP_TIMEOUT), (1, None)]
    assert seq.complete(0, "late", now=13) == [], "a late result after its skip is dropped"


def test_head_moving_restarts_the_gap_clock() -> None:
    seq: ResultSequencer[str] = ResultSequencer(gap_timeout_s=2)
    for i in range(4):
        seq.expect(i)
    seq.complete(2, "c", now=0)
    seq.complete(0, "a", now=1)  # head moves to 1, which still blocks 2
    assert seq.deadline == 3


def test_each_index_is_answered_once() -> None:
    seq: ResultSequencer[str] = ResultSequencer(gap_timeout_s=2)
    seq.expect(0)
    assert len(seq.complete(0, "a", now=0)) == 1
    assert seq.complete(0, "a", now=0) == []
    assert seq.skip(0, SkipReason.FAILED, "", now=0) == []


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 30), st.randoms(use_true_random=False), st.floats(0.5, 5))
def test_any_interleaving_answers_every_index_once_in_order(n: int, rng: random.Random, gap: float) -> None:
    seq: ResultSequencer[int] = ResultSequencer(gap_timeout_s=gap)
    events = [("done", i) for i in range(n)] + [("tick", i) for i in range(n)]
    rng.shuffle(events)
    lost = {i for i in range(n) if rng.random() < 0.2}
    sent = []
    now = 0.0
    for i in range(n):
        seq.expect(i)
    for kind, i in events:
        now += rng.random()
        if kind == "done" and i not in lost:
            sent += seq.complete(i, i, now)
        elif kind == "tick":
            sent += seq.on_tick(now)
    while not seq.all_answered:  # time passes: every gap eventually times out
        now += gap
        before = len(sent)
        sent += seq.on_tick(now)
        if len(sent) == before:
            # the last indexes are lost with nothing behind them: nothing is blocked, nothing to skip
            assert all(i in lost for i in range(seq.next_to_send, n))
            break
    indexes = [a.index for a in sent]
    assert indexes == list(range(len(indexes))), "answers go out in order, each once"
    for a in sent:
        assert (a.result is None) == (a.skip_reason is not None)
        if a.index not in lost:
            assert a.result == a.index or a.skip_reason is SkipReason.GAP_TIMEOUT


def test_a_resumed_stream_sends_from_the_index_its_client_names_and_never_before() -> None:
    seq: ResultSequencer[str] = ResultSequencer(gap_timeout_s=5, start=3)
    assert seq.complete(1, "already received", now=0) == [], "the client has it: not sent again"
    seq.expect(4)
    assert seq.complete(4, "e", now=0) == []
    assert [(a.index, a.result) for a in seq.complete(3, "d", now=0)] == [(3, "d"), (4, "e")]
