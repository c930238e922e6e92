"""Jobs: one per utterance, keyed `session_id:utterance_index`. Plain domain types, no I/O."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from lingua_grpc.registry import LanguagePair


class JobState(enum.Enum):
    CREATED = "CREATED"
    ASSIGNED = "ASSIGNED"
    ACCEPTED = "ACCEPTED"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    SKIPPED = "SKIPPED"


LIVE_STATES = (JobState.ASSIGNED, JobState.ACCEPTED)


class SkipReason(enum.Enum):
    """Why an utterance got no result."""

    NO_CAPACITY = "no_capacity"
    GAP_TIMEOUT = "gap_timeout"
    FAILED = "failed"
    NO_NODE = "no_node"
    SHUTDOWN = "shutdown"
    SESSION_BACKLOG = "session_backlog"
    STORAGE_FULL = "storage_full"
    LOST = "lost"
    STORE_UNAVAILABLE = "store_unavailable"


class Stage(enum.Enum):
    ASR = "asr"
    TRANSLATION = "translation"
    TTS = "tts"


def job_id(session_id: str, index: int) -> str:
    return f"{session_id}:{index}"


def parse_job_id(value: str) -> tuple[str, int]:
    session_id, sep, index = value.rpartition(":")
    if not sep or not session_id or not index.isdigit():
        raise ValueError(f"job id {value!r} is not session_id:utterance_index")
    return session_id, int(index)


@dataclass(frozen=True, slots=True)
class JobSpec:
    session_id: str
    index: int
    pair: LanguagePair
    sample_rate_hz: int
    tts: bool
    audio: bytes
    audio_end: int = 0  # where the utterance ends in the session's audio (samples since its first)
    duration_ms: int = 0  # of the utterance's audio

    @property
    def job_id(self) -> str:
        return job_id(self.session_id, self.index)

    @property
    def stages(self) -> tuple[Stage, ...]:
        return (Stage.ASR, Stage.TRANSLATION, Stage.TTS) if self.tts else (Stage.ASR, Stage.TRANSLATION)


@dataclass(frozen=True, slots=True)
class Assignment:
    """What a node is sent: one attempt of one job."""

    spec: JobSpec
    attempt: int
    deadline_ms: int


# What nodes say about jobs (node -> scheduler), as domain events.


@dataclass(frozen=True, slots=True)
class JobAccepted:
    job_id: str
    attempt: int


@dataclass(frozen=True, slots=True)
class JobRejected:
    job_id: str
    attempt: int
    reason: str
    message: str


@dataclass(frozen=True, slots=True)
class JobProgress:
    job_id: str
    attempt: int
    stage: Stage
    text: str
    duration_ms: int


@dataclass(frozen=True, slots=True)
class JobOutput:
    job_id: str
    attempt: int
    source_text: str
    translated_text: str
    tts_audio: bytes
    tts_sample_rate_hz: int
    asr_ms: int
    translation_ms: int
    tts_ms: int


@dataclass(frozen=True, slots=True)
class JobFailed:
    job_id: str
    attempt: int
    retryable: bool
    message: str


JobEvent = JobAccepted | JobRejected | JobProgress | JobOutput | JobFailed


def result_fields(output: JobOutput) -> dict[str, str | int | bytes]:
    """What a job's record keeps of its result (its TTS audio is kept apart, for a shorter time)."""
    return {
        "source_text": output.source_text,
        "translated_text": output.translated_text,
        "asr_ms": output.asr_ms,
        "translation_ms": output.translation_ms,
        "tts_ms": output.tts_ms,
        "tts_sample_rate_hz": output.tts_sample_rate_hz,
    }


def recorded_attempts(fields: dict[str, str]) -> int:
    """The attempts that reached a node, as a job's record keeps them (0 when it does not say)."""
    return int(fields.get("attempts", 0) or 0)


def output_from_record(fields: dict[str, str], tts_audio: bytes) -> JobOutput:
    """A recorded result, as the node sent it (for a session that resumes)."""
    return JobOutput(
        fields["job_id"],
        int(fields.get("attempt", 0)),
        fields.get("source_text", ""),
        fields.get("translated_text", ""),
        tts_audio,
        int(fields.get("tts_sample_rate_hz", 0) or 0),
        int(fields.get("asr_ms", 0) or 0),
        int(fields.get("translation_ms", 0) or 0),
        int(fields.get("tts_ms", 0) or 0),
    )


@dataclass(frozen=True, slots=True)
class ResultLimits:
    """Largest result a node may return (settings `node_max_result_*`): what passes reaches the client in
    one message under gRPC's default 4 MiB receive limit."""

    max_text_bytes: int = 65536
    max_tts_bytes: int = 3 * 1024 * 1024

    def refusal(self, event: JobEvent) -> JobFailed | None:
        """A result over the limits becomes a failed attempt (retried elsewhere), never forwarded."""
        if isinstance(event, JobProgress) and len(event.text.encode()) > self.max_text_bytes:
            return JobFailed(
                event.job_id, event.attempt, True, f"progress text over {self.max_text_bytes} bytes"
            )
        if not isinstance(event, JobOutput):
            return None
        for what, size, limit in (
            ("source_text", len(event.source_text.encode()), self.max_text_bytes),
            ("translated_text", len(event.translated_text.encode()), self.max_text_bytes),
            ("tts_audio", len(event.tts_audio), self.max_tts_bytes),
        ):
            if size > limit:
                return JobFailed(
                    event.job_id,
                    event.attempt,
                    True,
                    f"result {what} has {size} bytes, over the {limit} allowed",
                )
        return None
