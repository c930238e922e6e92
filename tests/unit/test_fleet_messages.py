"""What instances hand each other survives its encoding as Stream fields, whole."""

from __future__ import annotations

import pytest

from lingua_grpc.fleet._messages import (
    Assign,
    Cancel,
    Lost,
    Message,
    Moved,
    Relayed,
    Reroute,
    decode,
    encode,
)
from lingua_grpc.jobs import (
    Assignment,
    JobAccepted,
    JobFailed,
    JobOutput,
    JobProgress,
    JobRejected,
    JobSpec,
    Stage,
)
from lingua_grpc.registry import LanguagePair

SPEC = JobSpec("sess-1", 7, LanguagePair("en", "es"), 16000, True, b"\x00\x01" * 100)


def as_stream(fields: dict[str, str | int | bytes]) -> dict[bytes, bytes]:
    """What Redis gives back: every name and value as bytes."""
    return {k.encode(): v if isinstance(v, bytes) else str(v).encode() for k, v in fields.items()}


@pytest.mark.parametrize(
    "message",
    [
        Assign("sched-b", "gpu-1", Assignment(SPEC, 3, 1_700_000_000_000), 1_700_000_000_001),
        Cancel("gpu-1", SPEC.job_id, 3, "session ended", 5),
        Lost("sched-a", "gpu-1", SPEC.job_id, 3, "node gpu-1 lost", True, 6),
        Lost("sched-a", "gpu-1", SPEC.job_id, 3, "not held here", False, 6),
        Relayed("sched-a", "gpu-1", JobAccepted(SPEC.job_id, 3), 7),
        Relayed("sched-a", "gpu-1", JobRejected(SPEC.job_id, 3, "at_capacity", "all slots busy"), 7),
        Relayed("sched-a", "gpu-1", JobProgress(SPEC.job_id, 3, Stage.TRANSLATION, "hola", 12), 7),
        Relayed(
            "sched-a",
            "gpu-1",
            JobOutput(SPEC.job_id, 3, "hello", "hola", b"\xff\x00" * 50, 22050, 10, 20, 30),
            7,
        ),
        Relayed("sched-a", "gpu-1", JobFailed(SPEC.job_id, 3, False, "engine crashed"), 7),
        Relayed(
            "sched-a",
            "gpu-1",
            JobOutput(SPEC.job_id, 3, "hello", "hola", b"", 0, 10, 20, 0),
            8,
            recorded=True,
        ),
        Reroute("sched-c", "gpu-1", SPEC.job_id, 3, 9),
        Moved("sched-c", "sess-1", 4, 10),
    ],
    ids=lambda m: type(m).__name__ + "-" + type(getattr(m, "event", m)).__name__,
)
def test_every_message_comes_back_whole(message: Message) -> None:
    assert decode(as_stream(encode(message))) == message


def test_an_entry_that_is_not_a_message_is_refused() -> None:
    with pytest.raises(ValueError, match="teleport"):
        decode({b"kind": b"teleport"})
    with pytest.raises(KeyError):
        decode({b"kind": b"cancel", b"node_id": b"gpu-1"})
