"""SessionManager: checks a session's start, opens its actor, and closes it."""

from __future__ import annotations

import asyncio
import collections
import logging
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Protocol

from redis.exceptions import OutOfMemoryError, RedisError
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_delay, wait_exponential_jitter

from lingua_grpc.clock import Clock
from lingua_grpc.dispatch import Attempt, Dispatcher, Overhead, Ticket, skip_reason_for
from lingua_grpc.errors import (
    Aborted,
    FailedPrecondition,
    InvalidArgument,
    LinguaError,
    NotFound,
    ResourceExhausted,
    Unavailable,
)
from lingua_grpc.jobs import JobSpec, JobState, JobStore, SkipReason, output_from_record, recorded_attempts
from lingua_grpc.looplag import Saturation
from lingua_grpc.metrics import SchedulerMetrics
from lingua_grpc.registry import LanguagePair, RegistrySnapshot, SnapshotCache
from lingua_grpc.sessions._actor import SessionActor, SessionLimits, Start
from lingua_grpc.sessions._options import SAMPLE_RATES_HZ, SessionOptions
from lingua_grpc.sessions._records import SessionPosition, SessionStore
from lingua_grpc.sessions._token import ResumeTokens

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class StartRequest:
    pair: LanguagePair | None
    pcm_s16le: bool
    sample_rate_hz: int
    channels: int
    options: dict[str, int | bool] = field(default_factory=dict)
    resume_token: str = ""
    client_name: str = ""
    next_utterance_index: int = 0  # resuming: the first answer the client has not received
    audio_offset: int = 0  # resuming: position of the first sample the stream sends again


class SessionFleet(Protocol):
    """What resuming needs from the fleet (the relay)."""

    def reroute(self, job_id: str, attempt: int, node_id: str) -> bool | None: ...

    def connection_of(self, node_id: str) -> str | None: ...

    def moved(self, previous_owner: str, session_id: str, epoch: int) -> None: ...


@dataclass(frozen=True, slots=True)
class Resumability:
    """How sessions outlive their streams: their records, their tokens, and the fleet."""

    records: SessionStore
    tokens: ResumeTokens
    fleet: SessionFleet
    max_answers: int  # most answers a resume sends again: how far its next_utterance_index may be


class SessionManager:
    def __init__(
        self,
        defaults: SessionOptions,
        cache: SnapshotCache,
        store: JobStore,
        dispatcher: Dispatcher,
        metrics: SchedulerMetrics,
        clock: Clock,
        limits: SessionLimits,
        max_sessions: int,
        load: Saturation | None = None,
        queue_wait_limit_ms: int = 0,
        resumability: Resumability | None = None,
    ) -> None:
        """`load`, when given, refuses new sessions while it reads overloaded; so does a pair whose oldest
        queued job has waited over `queue_wait_limit_ms` (0: never). `resumability`: sessions are recorded
        in the store and resumable (None: they live and die with their stream)."""
        self._resume = resumability
        self._defaults = defaults
        self._cache = cache
        self._store = store
        self._dispatcher = dispatcher
        self._metrics = metrics
        self.clock = clock
        self.limits = limits
        self._max_sessions = max_sessions
        self._load = load
        self._queue_wait_limit_s = queue_wait_limit_ms / 1000
        self._sessions: dict[str, SessionActor] = {}
        self._owners: dict[str, str] = {}  # session id -> the credential that opened it
        # The registry's epoch changes when Redis lost its data: the open sessions' records went with it, and
        # are recorded again (else none could resume after this instance dies, and their jobs would wait
        # CREATED for a resume that cannot come).
        self._registry_epoch = cache.current.epoch
        cache.add_listener(self._on_snapshot)
        self._by_owner: collections.Counter[str] = collections.Counter()
        self.accepting = True
        self._tasks: set[asyncio.Task[None]] = set()

    def delivered(self, delivery_s: float) -> None:
        """A result reached its client's stream `delivery_s` after its node sent it: a metric only. It
        includes the time the result waited behind its client's earlier, unread results, so one client
        reading at its own pace moves it, and it must not decide admission (issue 19)."""
        self._metrics.result_delivery_seconds.observe(delivery_s)

    @property
    def _retry_after_ms(self) -> int | None:
        return round(self._load.window_s * 1000) if self._load is not None else None

    def is_open(self, session_id: str) -> bool:
        """Whether the session has a stream on this instance."""
        return session_id in self._sessions

    @property
    def open_sessions(self) -> int:
        return len(self._sessions)

    async def open(
        self, start: StartRequest, owner: str, owner_max_sessions: int, on_overflow: Callable[[], None]
    ) -> SessionActor:
        """Opens a session for `owner` (a credential's name), or resumes one (`start.resume_token`), within
        the instance's and the owner's session limits (`owner_max_sessions`, 0 for none). `on_overflow` is
        called once if the client stops reading its results: the caller must then end the stream."""
        self._check_serving()
        if start.resume_token:
            return await self._resume_session(start, owner, owner_max_sessions, on_overflow)
        if start.pair is None:
            raise InvalidArgument(
                "start.language_pair is required, e.g. source_language 'en', target_language 'es'"
            )
        start.pair.validate()
        self._check_format(start)
        options = self._defaults.resolve(start.options)
        if not self._cache.current.serves(start.pair):
            raise Unavailable(f"no registered node serves {start.pair}; try again when one registers")
        self._check_load(start.pair)
        self._check_room(owner, owner_max_sessions)
        session_id = uuid.uuid4().hex
        actor = SessionActor(
            session_id,
            start.pair,
            start.sample_rate_hz,
            options,
            self._store,
            self._dispatcher,
            self._metrics,
            self.clock,
            self.limits,
            on_overflow,
        )
        if self._resume is not None:
            try:
                await self._resume.records.open(
                    session_id, start.pair, start.sample_rate_hz, options, owner, start.client_name
                )
            except OutOfMemoryError:
                raise ResourceExhausted(
                    "the scheduler's store is full: try again later", retry_after_ms=self._retry_after_ms
                ) from None
            except RedisError as exc:
                raise Unavailable(f"the session could not be recorded ({exc!r}): try again shortly") from None
            actor.resume_token = self._resume.tokens.issue(session_id)
            actor.token_issued_ms = self.clock.now_ms()
        # Recording it awaited Redis: a stop that began meanwhile closed every session it knew, not this one.
        self._check_serving()
        self._register(actor, owner)
        log.info(
            "session started",
            extra={"session_id": session_id, "pair": str(start.pair), "client": start.client_name},
        )
        return actor

    def _check_serving(self) -> None:
        if not self.accepting:
            raise Unavailable("the scheduler is shutting down: connect again (to another instance)")
        if not self._cache.redis_reachable:
            raise Unavailable("the scheduler cannot reach Redis right now: try again shortly")
        if self._dispatcher.store_wait_bytes:  # what it holds for Redis is bounded: no new sessions add to it
            raise Unavailable("the scheduler waits for Redis to record utterances: try again shortly")

    @staticmethod
    def _check_format(start: StartRequest) -> None:
        if not start.pcm_s16le:
            raise InvalidArgument("start.audio_format.encoding must be AUDIO_ENCODING_PCM_S16LE")
        low, high = SAMPLE_RATES_HZ
        if not low <= start.sample_rate_hz <= high:
            raise InvalidArgument(
                f"start.audio_format.sample_rate_hz must be {low} to {high}, got {start.sample_rate_hz}"
            )
        if start.channels != 1:
            raise InvalidArgument(f"start.audio_format.channels must be 1 (mono), got {start.channels}")

    def _check_load(self, pair: LanguagePair) -> None:
        if self._load is not None and self._load.overloaded:
            self._metrics.sessions_refused.labels("overloaded").inc()
            raise ResourceExhausted(
                f"this scheduler instance is saturated ({self._load.describe()}): connect to another"
                " instance or retry after the retry-after-ms trailer",
                retry_after_ms=round(self._load.window_s * 1000),
            )
        waiting, waited_s = self._dispatcher.backlog(pair)
        if self._queue_wait_limit_s and waited_s > self._queue_wait_limit_s:
            self._metrics.sessions_refused.labels("pair_saturated").inc()
            raise ResourceExhausted(
                f"the {pair} nodes are saturated: {waiting} jobs wait for a slot, the oldest for"
                f" {waited_s * 1000:.0f} ms: retry after the retry-after-ms trailer",
                retry_after_ms=self._retry_after_ms,
            )

    def _check_room(self, owner: str, owner_max_sessions: int) -> None:
        if len(self._sessions) >= self._max_sessions:
            self._metrics.sessions_refused.labels("instance_full").inc()
            raise ResourceExhausted(
                f"this scheduler instance has {len(self._sessions)} open sessions, its limit: connect to"
                " another instance or try again later",
                retry_after_ms=self._retry_after_ms,
            )
        if owner_max_sessions and self._by_owner[owner] >= owner_max_sessions:
            self._metrics.sessions_refused.labels("credential_full").inc()
            raise ResourceExhausted(
                f"credential {owner!r} already has {self._by_owner[owner]} open sessions, its limit"
            )

    def _register(self, actor: SessionActor, owner: str) -> None:
        self._sessions[actor.session_id] = actor
        self._spawn(self._index(actor.session_id))
        self._owners[actor.session_id] = owner
        self._by_owner[owner] += 1
        self._metrics.sessions_open.set(len(self._sessions))

    async def _resume_session(
        self, start: StartRequest, owner: str, owner_max_sessions: int, on_overflow: Callable[[], None]
    ) -> SessionActor:
        """Takes the session over (a Lua claim), then rebuilds it from the store: answers recorded while its
        client was away are queued in order from the index the client names, its jobs still running are
        watched from here, its queued ones placed from here."""
        if self._resume is None:
            raise FailedPrecondition("this scheduler does not resume sessions: start a new session")
        resume = self._resume
        try:
            session_id = resume.tokens.session_of(start.resume_token)
        except LinguaError as exc:
            expired = isinstance(exc, FailedPrecondition)
            self._metrics.resume_refused.labels("expired" if expired else "forged").inc()
            raise
        state = await resume.records.get(session_id)
        if state is None:
            self._metrics.resume_refused.labels("not_found").inc()
            raise NotFound(
                f"session {session_id} is not in the scheduler's store (it expired, or the store lost its"
                " data): start a new session"
            )
        if start.pair is not None and start.pair != state.pair:
            self._metrics.resume_refused.labels("mismatch").inc()
            raise InvalidArgument(f"start.language_pair {start.pair} is not the session's ({state.pair})")
        if abs(start.next_utterance_index - state.next_index) > resume.max_answers:
            self._metrics.resume_refused.labels("mismatch").inc()
            raise InvalidArgument(
                f"start.next_utterance_index {start.next_utterance_index} is more than {resume.max_answers}"
                f" away from the session's {state.next_index} utterances"
            )
        if start.sample_rate_hz and start.sample_rate_hz != state.sample_rate_hz:
            self._metrics.resume_refused.labels("mismatch").inc()
            raise InvalidArgument(
                f"start.audio_format.sample_rate_hz {start.sample_rate_hz} is not the session's"
                f" ({state.sample_rate_hz})"
            )
        old = self._sessions.get(session_id)
        if old is None:
            self._check_room(owner, owner_max_sessions)
        try:
            claimed = await resume.records.claim(session_id, owner)
        except LinguaError as exc:
            reason = {NotFound: "not_found", FailedPrecondition: "ended"}.get(type(exc), "credential")
            self._metrics.resume_refused.labels(reason).inc()
            raise
        state = claimed.state
        first = start.next_utterance_index
        stream = Start(
            next_index=max(state.next_index, first),
            next_to_send=first,
            audio_offset=max(state.audio_offset, start.audio_offset),
            drop_samples=max(0, state.audio_offset - start.audio_offset),
            epoch=state.epoch,
        )
        old = self._sessions.get(session_id)  # looked up again: the claim awaited
        if old is not None:  # its old stream here has not ended yet: it does now, its jobs handed over
            self._hand_over(old, self._store.instance_id)
        elif claimed.previous_owner and claimed.previous_owner != self._store.instance_id:
            resume.fleet.moved(claimed.previous_owner, session_id, state.epoch)
        actor = SessionActor(
            session_id,
            state.pair,
            state.sample_rate_hz,
            state.options,
            self._store,
            self._dispatcher,
            self._metrics,
            self.clock,
            self.limits,
            on_overflow,
            stream,
        )
        actor.resume_token = resume.tokens.issue(session_id)
        actor.token_issued_ms = self.clock.now_ms()
        actor.resumed = True
        self._check_serving()  # (as for a new session: a stop may have begun while the claim awaited Redis)
        self._register(actor, owner)
        same = claimed.previous_owner == self._store.instance_id
        self._metrics.sessions_resumed.labels("same_instance" if same else "other_instance").inc()
        log.info(
            "session resumed",
            extra={
                "session_id": session_id,
                "previous_owner": claimed.previous_owner,
                "next_utterance_index": first,
                "utterances": state.next_index,
                "epoch": state.epoch,
            },
        )
        try:
            await self._inherit(actor, first, state.next_index, resume.fleet)
        except RedisError as exc:  # the stream goes on; what could not be read is answered as lost
            log.warning(
                "resumed session's jobs not read", extra={"session_id": session_id, "error": repr(exc)}
            )
        return actor

    async def _inherit(self, actor: SessionActor, first: int, end: int, fleet: SessionFleet) -> None:
        """Answers from the store, or jobs watched from here, for the session's utterances [first, end)."""
        session_id = actor.session_id
        stored = await self._store.records(session_id, range(first, end))
        now = self.clock.monotonic()
        for job in stored:
            record = job.record
            actor.inherit(job.index, int(record.fields.get("duration_ms", 0) or 0) if record else 0)
            if record is None:
                self._metrics.answers_resent.labels("skipped").inc()
                actor.job_skipped(
                    job.index, SkipReason.LOST, "the utterance's record is gone from the scheduler's store"
                )
            elif record.state is JobState.COMPLETED:
                self._metrics.answers_resent.labels("result").inc()
                output = output_from_record(record.fields, job.tts_audio)
                overhead = Overhead(0, 0, now, recorded=True, attempts=recorded_attempts(record.fields))
                actor.job_done(job.index, output, record.node_id, overhead)
            elif record.state in (JobState.SKIPPED, JobState.FAILED):
                self._metrics.answers_resent.labels("skipped").inc()
                reason = record.fields.get("reason", "")
                actor.job_skipped(job.index, skip_reason_for(record.state, reason), f"recorded: {reason}")
            else:
                audio = (await self._store.audio(session_id, job.index)) or b""
                duration_ms = int(record.fields.get("duration_ms", 0) or 0)
                self._rewatch(
                    actor, job.index, record.state, record.attempt, record.node_id, audio, duration_ms, fleet
                )

    def _rewatch(
        self,
        actor: SessionActor,
        index: int,
        state: JobState,
        attempt: int,
        node_id: str,
        audio: bytes,
        duration_ms: int,
        fleet: SessionFleet,
    ) -> None:
        spec = JobSpec(
            actor.session_id,
            index,
            actor.pair,
            actor.sample_rate_hz,
            actor.options.tts_enabled,
            audio,
            duration_ms=duration_ms,  # its attempt's deadline is scaled by it
        )
        ticket = Ticket(spec, actor, queue_timeout_s=actor.options.queue_timeout_ms / 1000, recorded=True)
        ticket.submitted_at = ticket.ended_at = self.clock.monotonic()
        if state is JobState.CREATED or not node_id:
            if not audio:
                actor.job_skipped(index, SkipReason.LOST, "the utterance's audio is no longer kept")
                return
            ticket.attempt = Attempt(attempt)
            self._spawn(self._submit(ticket))
            return
        connection = fleet.connection_of(node_id) or ""
        ticket.attempt = Attempt(attempt, node_id, connection, placed_at=self.clock.monotonic())
        runs = fleet.reroute(spec.job_id, attempt, node_id)
        self._dispatcher.adopt_running(ticket, accepted=runs is True or state is JobState.ACCEPTED)
        if runs is False:
            why = f"node {node_id} no longer runs it"
            self._dispatcher.attempt_lost(spec.job_id, attempt, why, node_failed=False)

    async def _submit(self, ticket: Ticket) -> None:
        try:
            await self._dispatcher.submit(ticket)
        except RedisError as exc:
            log.warning("resumed job not placed", extra={"job_id": ticket.spec.job_id, "error": repr(exc)})
            ticket.sink.job_skipped(ticket.spec.index, SkipReason.FAILED, "the job could not be placed")

    def fresh_token(self, actor: SessionActor) -> str:
        """A new resume token for the session when the one its client holds is a quarter through its life
        (sent with the next AudioRecorded); '' otherwise."""
        if self._resume is None:
            return ""
        now = self.clock.now_ms()
        if now - actor.token_issued_ms < self._resume.tokens.ttl_ms // 4:
            return ""
        actor.resume_token = self._resume.tokens.issue(actor.session_id)
        actor.token_issued_ms = now
        return actor.resume_token

    def moved(self, session_id: str, epoch: int, new_owner: str) -> None:
        """Another instance resumed this session (ownership epoch `epoch`): its stream here ends (ABORTED) and
        its jobs are handed over."""
        actor = self._sessions.get(session_id)
        if actor is not None and actor.start.epoch < epoch:
            self._hand_over(actor, new_owner)

    def _hand_over(self, actor: SessionActor, new_owner: str) -> None:
        actor.handed_to = new_owner
        self._close(actor)
        actor.fail(
            Aborted(
                f"session {actor.session_id} was resumed on another stream (instance {new_owner}): this one"
                " ends"
            ),
            at_once=True,
        )

    def _on_snapshot(self, snapshot: RegistrySnapshot) -> None:
        if not snapshot.epoch or snapshot.epoch == self._registry_epoch:
            return
        lost = bool(self._registry_epoch)  # (the first epoch this instance sees is no loss)
        self._registry_epoch = snapshot.epoch
        if lost and self._resume is not None and self._sessions:
            self._spawn(self._record_again())

    async def _record_again(self) -> None:
        """Redis lost its data: each open session is recorded again where it stands, and indexed. While
        Redis does not answer, the pass is tried again (with backoff, for a session's resume TTL at most)."""
        assert self._resume is not None
        again = 0
        try:
            async for attempt in AsyncRetrying(
                retry=retry_if_exception_type(RedisError),
                wait=wait_exponential_jitter(multiplier=0.1, max=2.0),
                stop=stop_after_delay(self._resume.tokens.ttl_ms / 1000),
                reraise=True,
            ):
                with attempt:
                    for session_id, actor in list(self._sessions.items()):
                        if actor.closed:
                            continue
                        position = SessionPosition(
                            actor.start.epoch, actor.next_index, actor.cut_offset, actor.sent
                        )
                        owner = self._owners.get(session_id, "")
                        if await self._resume.records.open(
                            session_id, actor.pair, actor.sample_rate_hz, actor.options, owner, "", position
                        ):
                            await self._store.session_opened(session_id)
                            again += 1
        except RedisError as exc:
            log.warning("open sessions not recorded again", extra={"error": repr(exc)})
        log.warning("Redis lost its data: open sessions recorded again", extra={"sessions": again})

    async def _index(self, session_id: str) -> None:
        # Off the utterance path: the index only matters if this instance dies with the session's jobs.
        try:
            await self._store.session_opened(session_id)
        except RedisError as exc:  # its jobs then end with their TTL, not at a survivor's takeover
            log.warning("session not put in the instance's index", extra={"error": repr(exc)})

    async def _unindex(self, session_id: str) -> None:
        try:
            await self._store.session_closed(session_id)
        except RedisError as exc:  # left in the index: a survivor finds its jobs final, and the index expires
            log.warning("session not removed from the instance's index", extra={"error": repr(exc)})

    def _spawn(self, coro: Coroutine[object, object, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def close_all(self, reason: str) -> None:
        """Ends every session with UNAVAILABLE after what it already has queued for its client."""
        for actor in list(self._sessions.values()):
            actor.fail(Unavailable(reason))

    def close(self, actor: SessionActor, resumable: bool = False) -> None:
        """The session's stream ended. `resumable`: the session lives on (its client went, or this instance
        stops): its jobs keep running and its client may resume it on any instance; else it is over for
        good. A session handed over to another stream was closed when it was."""
        if actor.handed_to is None and resumable and self._resume is not None:
            actor.handed_to = ""  # nobody yet: results are recorded for the resume
        self._close(actor)

    def _close(self, actor: SessionActor) -> None:
        actor.closed = True
        if self._sessions.get(actor.session_id) is not actor:
            return  # closed already (handed over)
        del self._sessions[actor.session_id]
        owner = self._owners.pop(actor.session_id)
        self._by_owner[owner] -= 1
        if not self._by_owner[owner]:
            del self._by_owner[owner]
        if actor.handed_to is not None:
            self._dispatcher.detach_session(actor.session_id)
        else:
            self._dispatcher.cancel_session(actor.session_id)
        if self._resume is not None and not actor.handed_to:  # (another stream's now: nothing to record)
            self._spawn(self._record_close(actor, ended=actor.handed_to is None))
        self._spawn(self._unindex(actor.session_id))
        self._metrics.sessions_open.set(len(self._sessions))
        log.info(
            "session ended" if actor.handed_to is None else "session stream ended; the session lives on",
            extra={"session_id": actor.session_id, "handed_to": actor.handed_to},
        )

    async def _record_close(self, actor: SessionActor, ended: bool) -> None:
        if self._resume is None:
            return
        try:
            await self._resume.records.close(actor.session_id, actor.start.epoch, actor.sent, ended)
        except RedisError as exc:  # the record expires with its TTL; a resume finds it open
            log.warning(
                "session end not recorded", extra={"session_id": actor.session_id, "error": repr(exc)}
            )
