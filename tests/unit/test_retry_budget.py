"""The retry budget (gRPC retry throttling): failures by live nodes drain it, results refill it."""

from __future__ import annotations

import pytest

from lingua_grpc.dispatch._budget import RetryBudget

pytestmark = pytest.mark.unit


def test_a_node_that_fails_everything_stops_getting_retries_once_half_the_budget_is_spent() -> None:
    budget = RetryBudget(max_tokens=10, refill=0.1)
    allowed = 0
    for _ in range(20):
        budget.failed()
        allowed += budget.allows_retry()
    assert allowed == 4, "5 failures bring 10 tokens to the half: the 5th and later are not run again"


def test_results_refill_the_budget_and_a_low_failure_rate_never_throttles() -> None:
    budget = RetryBudget(max_tokens=10, refill=0.1)
    for _ in range(6):
        budget.failed()
    assert not budget.allows_retry()
    for _ in range(20):
        budget.succeeded()
    assert budget.allows_retry(), "two more tokens after 20 results"
    steady = RetryBudget(max_tokens=100, refill=0.1)
    for n in range(10_000):  # one failure in 12 attempts: under refill / (1 + refill)
        steady.failed() if n % 12 == 0 else steady.succeeded()
        assert steady.allows_retry()
    assert steady.tokens <= 100


def test_the_budget_never_goes_below_empty_nor_above_full() -> None:
    budget = RetryBudget(max_tokens=4, refill=1.0)
    for _ in range(10):
        budget.failed()
    assert budget.tokens == 0
    for _ in range(10):
        budget.succeeded()
    assert budget.tokens == 4
