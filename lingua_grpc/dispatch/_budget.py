"""RetryBudget: how many failed attempts this instance may run again, after gRPC's retry throttling.

gRPC (gRFC A6) and Envoy's retry budgets bound retries so that a fault costs a bounded share of capacity
instead of multiplying the load: here a token bucket of `max_tokens` that each attempt failed by a live node
drains by one and each result refills by `refill`; while it holds half or less, such attempts are not run
again. A node that fails or rejects everything fast then burns a few jobs, not the fleet's slots; a sustained
failure rate under about refill / (1 + refill) of the results never reaches the threshold. Attempts of a
lost node do not drain it: the node's capacity went with its work, so running that work elsewhere is not an
amplification. Pure: no clock, no I/O.
"""

from __future__ import annotations


class RetryBudget:
    def __init__(self, max_tokens: int, refill: float) -> None:
        self._max = float(max_tokens)
        self._refill = refill
        self._tokens = float(max_tokens)

    @property
    def tokens(self) -> float:
        return self._tokens

    def allows_retry(self) -> bool:
        """Whether an attempt that just failed may run again."""
        return self._tokens > self._max / 2

    def failed(self) -> None:
        """An attempt failed on a live node (rejected, failed, past its deadline)."""
        self._tokens = max(0.0, self._tokens - 1)

    def succeeded(self) -> None:
        """A result was recorded."""
        self._tokens = min(self._max, self._tokens + self._refill)
