"""PairQueues: FIFO per pair, re-runs ahead, freed slots offered once (pure)."""

from __future__ import annotations

from lingua_grpc.dispatch import Ticket
from lingua_grpc.dispatch._queues import PairQueues
from lingua_grpc.jobs import JobOutput, JobProgress, JobSpec, SkipReason
from lingua_grpc.registry import LanguagePair

EN_ES, EN_DE = LanguagePair("en", "es"), LanguagePair("en", "de")


class Sink:
    closed = False
    handed_to: str | None = None

    def job_progress(self, index: int, event: JobProgress) -> None: ...

    def job_done(self, index: int, output: JobOutput, node_id: str, overhead: object) -> None: ...

    def job_skipped(self, index: int, reason: SkipReason, message: str) -> None: ...

    def job_recorded(self, index: int) -> None: ...


def ticket(index: int, pair: LanguagePair = EN_ES, submitted_at: float = 0.0) -> Ticket:
    t = Ticket(JobSpec("s", index, pair, 16000, False, b""), Sink(), queue_timeout_s=5)
    t.submitted_at = submitted_at
    return t


def test_each_pair_is_its_own_fifo_and_a_rerun_waits_ahead() -> None:
    queues = PairQueues(max_per_pair=3)
    first, second, other = ticket(0, submitted_at=1), ticket(1, submitted_at=2), ticket(2, EN_DE)
    for t in (first, second, other):
        queues.append(t)
    rerun = ticket(3, submitted_at=0.5)
    queues.push_front(rerun)
    assert queues.head(EN_ES) is rerun and queues.head(EN_DE) is other
    assert queues.waiting(EN_ES) == 3 and queues.full(EN_ES) and not queues.full(EN_DE)
    assert queues.oldest_submitted(EN_ES) == 0.5
    assert queues.remove(rerun) and not queues.remove(rerun)
    assert queues.head(EN_ES) is first and len(queues) == 3


def test_a_freed_slot_is_offered_once_to_a_job_its_node_can_take() -> None:
    queues = PairQueues(max_per_pair=10)
    queues.slot_freed("gpu-1")
    assert queues.take_freed(["gpu-2"], set()) is None  # gpu-1 does not serve this job's pair
    assert queues.take_freed(["gpu-1"], {"gpu-1"}) is None  # it failed this job before
    assert queues.take_freed(["gpu-1", "gpu-2"], set()) == "gpu-1"
    assert queues.take_freed(["gpu-1"], set()) is None  # consumed
    queues.slot_freed("gpu-2")
    queues.forget_freed()
    assert queues.take_freed(["gpu-2"], set()) is None
