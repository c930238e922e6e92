"""Protobuf <-> domain conversion for every service: the only module here that touches both sides."""

from __future__ import annotations

from lingua_grpc.fleet import InstanceRecord
from lingua_grpc.jobs import (
    Assignment,
    JobAccepted,
    JobEvent,
    JobFailed,
    JobOutput,
    JobProgress,
    JobRejected,
    JobState,
    SkipReason,
    Stage,
    StoredJob,
)
from lingua_grpc.nodes import CancelCommand, DrainCommand, Outgoing, ReregisterCommand
from lingua_grpc.pb import common_pb2, node_pb2, registry_pb2, session_pb2
from lingua_grpc.registry import (
    Gpu,
    LanguagePair,
    NodeCapabilities,
    NodeLoad,
    NodeRecord,
    NodeState,
    Pool,
    Registration,
    RegistrySnapshot,
    canonical_language,
)
from lingua_grpc.sessions import (
    BOUNDS,
    Output,
    ProgressOut,
    RecordedOut,
    ResultOut,
    SessionActor,
    SessionOptions,
    SessionState,
    SkippedOut,
    StartRequest,
)

_STAGE_TO = {
    Stage.ASR: common_pb2.STAGE_ASR,
    Stage.TRANSLATION: common_pb2.STAGE_TRANSLATION,
    Stage.TTS: common_pb2.STAGE_TTS,
}
_STAGE_FROM = {v: k for k, v in _STAGE_TO.items()}
_SKIP = {
    SkipReason.NO_CAPACITY: session_pb2.SKIP_REASON_NO_CAPACITY,
    SkipReason.GAP_TIMEOUT: session_pb2.SKIP_REASON_GAP_TIMEOUT,
    SkipReason.FAILED: session_pb2.SKIP_REASON_FAILED,
    SkipReason.NO_NODE: session_pb2.SKIP_REASON_NO_NODE,
    SkipReason.SHUTDOWN: session_pb2.SKIP_REASON_SHUTDOWN,
    SkipReason.SESSION_BACKLOG: session_pb2.SKIP_REASON_SESSION_BACKLOG,
    SkipReason.STORAGE_FULL: session_pb2.SKIP_REASON_STORAGE_FULL,
    SkipReason.LOST: session_pb2.SKIP_REASON_LOST,
    SkipReason.STORE_UNAVAILABLE: session_pb2.SKIP_REASON_STORE_UNAVAILABLE,
}
_OPTION_FIELDS = (*BOUNDS, "tts_enabled", "wait_for_room")

_STATE = {NodeState.UP: common_pb2.NODE_STATE_UP, NodeState.DRAINING: common_pb2.NODE_STATE_DRAINING}


def pair_from_proto(p: common_pb2.LanguagePair) -> LanguagePair:
    return LanguagePair.of(p.source_language, p.target_language)


def pair_to_proto(p: LanguagePair) -> common_pb2.LanguagePair:
    return common_pb2.LanguagePair(source_language=p.source, target_language=p.target)


def capabilities_from_proto(c: common_pb2.NodeCapabilities) -> NodeCapabilities:
    return NodeCapabilities(
        asr_languages=tuple(canonical_language(t) for t in c.asr_languages),
        translation_pairs=tuple(pair_from_proto(p) for p in c.translation_pairs),
        tts_languages=tuple(canonical_language(t) for t in c.tts_languages),
        gpus=tuple(Gpu(g.index, g.name, g.uuid, g.memory_total_bytes) for g in c.gpus),
        max_concurrency=c.max_concurrency,
        agent_version=c.agent_version,
        labels=tuple(sorted(c.labels.items())),
    )


def capabilities_to_proto(c: NodeCapabilities) -> common_pb2.NodeCapabilities:
    return common_pb2.NodeCapabilities(
        asr_languages=c.asr_languages,
        translation_pairs=[pair_to_proto(p) for p in c.translation_pairs],
        tts_languages=c.tts_languages,
        gpus=[
            common_pb2.Gpu(index=g.index, name=g.name, uuid=g.uuid, memory_total_bytes=g.memory_total_bytes)
            for g in c.gpus
        ],
        max_concurrency=c.max_concurrency,
        agent_version=c.agent_version,
        labels=dict(c.labels),
    )


def registration_from_proto(r: node_pb2.Register) -> Registration:
    return Registration(
        node_id=r.node_id,
        capabilities=capabilities_from_proto(r.capabilities),
        running=tuple((j.job_id, j.attempt) for j in r.running_jobs),
    )


def load_from_proto(load: common_pb2.NodeLoad) -> NodeLoad:
    return NodeLoad(
        running_jobs=load.running_jobs,
        gpu_utilization=load.gpu_utilization,
        gpu_memory_used_bytes=load.gpu_memory_used_bytes,
        cpu_utilization=load.cpu_utilization,
    )


def load_to_proto(load: NodeLoad) -> common_pb2.NodeLoad:
    return common_pb2.NodeLoad(
        running_jobs=load.running_jobs,
        gpu_utilization=load.gpu_utilization,
        gpu_memory_used_bytes=load.gpu_memory_used_bytes,
        cpu_utilization=load.cpu_utilization,
    )


def outgoing_to_proto(message: Outgoing) -> node_pb2.ConnectResponse:
    if isinstance(message, DrainCommand):
        return node_pb2.ConnectResponse(drain=node_pb2.Drain(reason=message.reason))
    if isinstance(message, ReregisterCommand):
        return node_pb2.ConnectResponse(reregister=node_pb2.Reregister(reason=message.reason))
    if isinstance(message, CancelCommand):
        return node_pb2.ConnectResponse(
            cancel_job=node_pb2.CancelJob(
                job_id=message.job_id, attempt=message.attempt, reason=message.reason
            )
        )
    if isinstance(message, Assignment):
        spec = message.spec
        return node_pb2.ConnectResponse(
            assign_job=node_pb2.AssignJob(
                job_id=spec.job_id,
                attempt=message.attempt,
                session_id=spec.session_id,
                utterance_index=spec.index,
                language_pair=pair_to_proto(spec.pair),
                audio_format=_pcm(spec.sample_rate_hz),
                audio=spec.audio,
                stages=[_STAGE_TO[s] for s in spec.stages],
                deadline_unix_ms=message.deadline_ms,
            )
        )
    raise TypeError(f"no protobuf form for {message!r}")


def node_to_proto(node: NodeRecord, pools: tuple[str, ...] = ()) -> registry_pb2.Node:
    return registry_pb2.Node(
        node_id=node.node_id,
        state=_STATE[node.state],
        capabilities=capabilities_to_proto(node.capabilities),
        load=load_to_proto(node.load),
        reserved_slots=node.reserved_slots,
        scheduler_instance_id=node.instance_id,
        registered_unix_ms=node.registered_ms,
        last_heartbeat_unix_ms=node.last_heartbeat_ms,
        lease_remaining_ms=node.lease_remaining_ms,
        pools=pools,
    )


def pool_to_proto(pool: Pool) -> registry_pb2.Pool:
    return registry_pb2.Pool(
        name=pool.name,
        language_pair=pair_to_proto(pool.pair),
        node_ids=pool.node_ids,
        configured=pool.configured,
    )


def snapshot_to_proto(s: RegistrySnapshot) -> registry_pb2.RegistrySnapshot:
    return registry_pb2.RegistrySnapshot(
        version=s.version,
        nodes=[node_to_proto(n, s.pools_by_node.get(n.node_id, ())) for n in s.nodes.values()],
        pools=[pool_to_proto(p) for p in s.pools],
        built_unix_ms=s.built_ms,
        epoch=s.epoch,
    )


def _pcm(sample_rate_hz: int) -> common_pb2.AudioFormat:
    return common_pb2.AudioFormat(
        encoding=common_pb2.AUDIO_ENCODING_PCM_S16LE, sample_rate_hz=sample_rate_hz, channels=1
    )


def job_event_from_proto(m: node_pb2.ConnectRequest) -> JobEvent | None:
    """The job message a node sent, or None for messages that are not about jobs."""
    kind = m.WhichOneof("kind")
    if kind == "job_accepted":
        return JobAccepted(m.job_accepted.job_id, m.job_accepted.attempt)
    if kind == "job_rejected":
        r = m.job_rejected
        return JobRejected(r.job_id, r.attempt, node_pb2.RejectReason.Name(r.reason), r.message)
    if kind == "job_progress":
        p = m.job_progress
        return JobProgress(p.job_id, p.attempt, _STAGE_FROM.get(p.stage, Stage.ASR), p.text, p.duration_ms)
    if kind == "job_result":
        r2 = m.job_result
        return JobOutput(
            r2.job_id,
            r2.attempt,
            r2.source_text,
            r2.translated_text,
            r2.tts_audio,
            r2.tts_audio_format.sample_rate_hz,
            r2.timings.asr_ms,
            r2.timings.translation_ms,
            r2.timings.tts_ms,
        )
    if kind == "job_failed":
        f = m.job_failed
        return JobFailed(f.job_id, f.attempt, f.retryable, f.message)
    return None


def start_from_proto(s: session_pb2.SessionStart) -> StartRequest:
    options: dict[str, int | bool] = {
        name: getattr(s.options, name)
        for name in _OPTION_FIELDS
        if s.options.HasField(name)  # type: ignore[arg-type]
    }
    return StartRequest(
        pair=pair_from_proto(s.language_pair) if s.HasField("language_pair") else None,
        pcm_s16le=s.audio_format.encoding == common_pb2.AUDIO_ENCODING_PCM_S16LE,
        sample_rate_hz=s.audio_format.sample_rate_hz,
        channels=s.audio_format.channels,
        options=options,
        resume_token=s.resume_token,
        client_name=s.client_name,
        next_utterance_index=s.next_utterance_index,
        audio_offset=s.audio_offset,
    )


def options_to_proto(o: SessionOptions) -> session_pb2.SessionOptions:
    return session_pb2.SessionOptions(
        pause_ms=o.pause_ms,
        hangover_ms=o.hangover_ms,
        max_utterance_ms=o.max_utterance_ms,
        gap_timeout_ms=o.gap_timeout_ms,
        tts_enabled=o.tts_enabled,
        silence_threshold_dbfs=o.silence_threshold_dbfs,
        queue_timeout_ms=o.queue_timeout_ms,
        wait_for_room=o.wait_for_room,
    )


def started_to_proto(actor: SessionActor, max_outstanding: int) -> session_pb2.StreamResponse:
    return session_pb2.StreamResponse(
        started=session_pb2.SessionStarted(
            session_id=actor.session_id,
            options=options_to_proto(actor.options),
            language_pair=pair_to_proto(actor.pair),
            audio_format=_pcm(actor.sample_rate_hz),
            resume_token=actor.resume_token,
            resumed=actor.resumed,
            next_utterance_index=actor.start.next_to_send,
            audio_offset=actor.start.audio_offset,
            max_outstanding_utterances=max_outstanding,
        )
    )


def output_to_proto(out: Output) -> session_pb2.StreamResponse:
    if isinstance(out, ProgressOut):
        return session_pb2.StreamResponse(
            progress=session_pb2.UtteranceProgress(
                utterance_index=out.index, stage=_STAGE_TO[out.stage], text=out.text
            )
        )
    if isinstance(out, ResultOut):
        o = out.output
        result = session_pb2.UtteranceResult(
            utterance_index=out.index,
            source_text=o.source_text,
            translated_text=o.translated_text,
            tts_audio=o.tts_audio,
            node_id=out.node_id,
            attempt=out.overhead.attempts or o.attempt,
            audio_duration_ms=out.audio_duration_ms,
            timings=common_pb2.StageTimings(
                queue_ms=out.overhead.queue_ms,
                scheduler_dispatch_us=out.overhead.dispatch_us,
                asr_ms=o.asr_ms,
                translation_ms=o.translation_ms,
                tts_ms=o.tts_ms,
                total_ms=out.total_ms,
            ),
        )
        if o.tts_audio:
            result.tts_audio_format.CopyFrom(_pcm(o.tts_sample_rate_hz))
        return session_pb2.StreamResponse(result=result)
    if isinstance(out, SkippedOut):
        return session_pb2.StreamResponse(
            skipped=session_pb2.UtteranceSkipped(
                utterance_index=out.index, reason=_SKIP[out.reason], message=out.message
            )
        )
    if isinstance(out, RecordedOut):
        return session_pb2.StreamResponse(
            audio_recorded=session_pb2.AudioRecorded(
                audio_offset=out.offset, next_utterance_index=out.next_index
            )
        )
    raise TypeError(f"no protobuf form for {out!r}")


def instance_to_proto(r: InstanceRecord) -> registry_pb2.SchedulerInstance:
    return registry_pb2.SchedulerInstance(
        instance_id=r.instance_id,
        address=r.address,
        alive=r.alive,
        lease_remaining_ms=r.lease_remaining_ms,
        started_unix_ms=r.started_ms,
        last_heartbeat_unix_ms=r.last_heartbeat_ms,
        nodes_connected=r.holdings.nodes,
        sessions_open=r.holdings.sessions,
        jobs_running=r.holdings.jobs,
    )


_JOB_STATE = {
    JobState.CREATED: registry_pb2.JOB_STATE_CREATED,
    JobState.ASSIGNED: registry_pb2.JOB_STATE_ASSIGNED,
    JobState.ACCEPTED: registry_pb2.JOB_STATE_ACCEPTED,
    JobState.COMPLETED: registry_pb2.JOB_STATE_COMPLETED,
    JobState.FAILED: registry_pb2.JOB_STATE_FAILED,
    JobState.SKIPPED: registry_pb2.JOB_STATE_SKIPPED,
}


def job_to_proto(job: StoredJob) -> registry_pb2.Job:
    """A job's record for operators: its life and outcome, never the user's words or audio."""
    record = job.record
    if record is None:
        raise ValueError(f"job {job.index} has no record")
    f = record.fields

    def number(name: str) -> int:
        return int(f.get(name, 0) or 0)

    out = registry_pb2.Job(
        job_id=record.job_id,
        session_id=f.get("session_id", ""),
        utterance_index=job.index,
        state=_JOB_STATE[record.state],
        attempt=record.attempt,
        node_id=record.node_id,
        created_by_instance_id=f.get("owner", ""),
        language_pair=common_pb2.LanguagePair(
            source_language=f.get("source_language", ""), target_language=f.get("target_language", "")
        ),
        created_unix_ms=number("created_ms"),
        assigned_unix_ms=number("assigned_ms"),
        updated_unix_ms=number("updated_ms"),
        reason=f.get("reason", ""),
        tts_audio_kept=job.tts_kept,
        audio_kept=job.audio_kept,
    )
    if record.state is JobState.COMPLETED:
        out.timings.CopyFrom(
            common_pb2.StageTimings(
                asr_ms=number("asr_ms"), translation_ms=number("translation_ms"), tts_ms=number("tts_ms")
            )
        )
    return out


def session_record_to_proto(s: SessionState, owner_alive: bool) -> registry_pb2.SessionRecord:
    return registry_pb2.SessionRecord(
        session_id=s.session_id,
        language_pair=pair_to_proto(s.pair),
        audio_format=_pcm(s.sample_rate_hz),
        owner_instance_id=s.owner,
        owner_alive=owner_alive,
        resumes=max(0, s.epoch - 1),
        next_utterance_index=s.next_index,
        answers_sent=s.sent,
        audio_offset=s.audio_offset,
        ended=s.ended,
        credential=s.credential,
        client_name=s.client_name,
        created_unix_ms=s.created_ms,
        updated_unix_ms=s.updated_ms,
    )
