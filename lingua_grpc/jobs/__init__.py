"""Jobs: one per utterance, with a fenced state machine and node slot reservations in Redis."""

from lingua_grpc.jobs._model import (
    LIVE_STATES,
    Assignment,
    JobAccepted,
    JobEvent,
    JobFailed,
    JobOutput,
    JobProgress,
    JobRejected,
    JobSpec,
    JobState,
    ResultLimits,
    SkipReason,
    Stage,
    job_id,
    output_from_record,
    parse_job_id,
    result_fields,
)
from lingua_grpc.jobs._store import JobRecord, JobStore, StoredJob
from lingua_grpc.store import Reservation, slot_member

__all__ = [
    "LIVE_STATES",
    "Assignment",
    "JobAccepted",
    "JobEvent",
    "JobFailed",
    "JobOutput",
    "JobProgress",
    "JobRecord",
    "JobRejected",
    "JobSpec",
    "JobState",
    "JobStore",
    "Reservation",
    "ResultLimits",
    "SkipReason",
    "Stage",
    "StoredJob",
    "job_id",
    "output_from_record",
    "parse_job_id",
    "result_fields",
    "slot_member",
]
