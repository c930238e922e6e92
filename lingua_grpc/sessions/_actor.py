"""SessionActor: one asyncio task per session, the only writer of its state.

The gRPC read loop turns client messages into events on the actor's inbox; job outcomes and timers arrive
on a control queue that the actor empties first, so results never wait behind buffered audio. Audio events
hold a slot of a bounded semaphore until the actor has taken them, so a client that sends faster than the
actor works is slowed by gRPC flow control, never buffered without bound.
Timers carry a generation (the segmenter's) or are re-armed from the sequencer's deadline, so a stale
timer changes nothing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from redis.exceptions import OutOfMemoryError, RedisError

from lingua_grpc.clock import Clock
from lingua_grpc.dispatch import Dispatcher, Overhead, Ticket
from lingua_grpc.errors import LinguaError
from lingua_grpc.jobs import JobOutput, JobProgress, JobSpec, JobStore, SkipReason, Stage
from lingua_grpc.metrics import SchedulerMetrics
from lingua_grpc.registry import LanguagePair
from lingua_grpc.sessions._mailbox import Mailbox
from lingua_grpc.sessions._options import SessionOptions
from lingua_grpc.sessions._ordering import Answer, ResultSequencer
from lingua_grpc.sessions._segmentation import EndReason, Segmenter, SegmenterConfig, Utterance
from lingua_grpc.tasks import StopBetweenSteps

log = logging.getLogger(__name__)


# Inbox events.
@dataclass(frozen=True, slots=True)
class _Audio:
    pcm: bytes
    is_final: bool


@dataclass(frozen=True, slots=True)
class _Playback:
    playing: bool


@dataclass(frozen=True, slots=True)
class _Finalize:
    end_of_stream: bool


@dataclass(frozen=True, slots=True)
class _SegmentTimer:
    generation: int


@dataclass(frozen=True, slots=True)
class _GapTimer:
    pass


@dataclass(frozen=True, slots=True)
class _Fail:
    error: LinguaError


@dataclass(frozen=True, slots=True)
class _Progress:
    index: int
    event: JobProgress


@dataclass(frozen=True, slots=True)
class _Done:
    index: int
    output: JobOutput
    node_id: str
    overhead: Overhead


@dataclass(frozen=True, slots=True)
class _Skipped:
    index: int
    reason: SkipReason
    message: str


@dataclass(frozen=True, slots=True)
class _Recorded:
    index: int


_Event = (
    _Audio
    | _Playback
    | _Finalize
    | _SegmentTimer
    | _GapTimer
    | _Progress
    | _Done
    | _Skipped
    | _Recorded
    | _Fail
)


# Outbox: what the client is sent, in order.
@dataclass(frozen=True, slots=True)
class ProgressOut:
    index: int
    stage: Stage
    text: str


@dataclass(frozen=True, slots=True)
class ResultOut:
    index: int
    output: JobOutput
    node_id: str
    overhead: Overhead
    total_ms: int
    audio_duration_ms: int


@dataclass(frozen=True, slots=True)
class SkippedOut:
    index: int
    reason: SkipReason
    message: str


@dataclass(frozen=True, slots=True)
class RecordedOut:
    """The session's audio is recorded up to `offset` (samples since its first): the client may drop it.
    `next_index`: how many of the session's utterances lie before it."""

    offset: int
    next_index: int = 0


@dataclass(frozen=True, slots=True)
class Closed:
    """Every utterance is answered after end of stream: the server closes the stream with OK."""

    error: LinguaError | None = None


Output = ProgressOut | ResultOut | SkippedOut | RecordedOut | Closed


def output_bytes(out: Output) -> int:
    """About what an output costs held in memory until the client reads it (payloads plus a message's
    overhead), for the unread-output bound."""
    if isinstance(out, ResultOut):
        o = out.output
        return 256 + len(o.source_text) + len(o.translated_text) + len(o.tts_audio)
    if isinstance(out, ProgressOut):
        return 64 + len(out.text)
    if isinstance(out, SkippedOut):
        return 64 + len(out.message)
    if isinstance(out, RecordedOut):
        return 64
    return 0


@dataclass(frozen=True, slots=True)
class SessionLimits:
    """What one session may hold (settings `session_*`)."""

    inbox_chunks: int = 64  # audio chunks buffered before the client is slowed down
    max_outstanding: int = 32  # utterances waiting or running; more are skipped at once
    outbox_max_bytes: int = 16 * 1024 * 1024  # unread output; over it the session ends


@dataclass(frozen=True, slots=True)
class _Meta:
    ended_at: float | None  # None: it ended before this stream (the session resumed)
    duration_ms: int


@dataclass(frozen=True, slots=True)
class Start:
    """Where a session's stream starts: at 0 for a new session; where the client and the store say for one
    that resumes."""

    next_index: int = 0  # the next utterance takes this index
    next_to_send: int = 0  # the first answer this stream sends
    audio_offset: int = (
        0  # position of the first sample this stream keeps (samples since the session's first)
    )
    drop_samples: int = 0  # samples the client sends again that the store already has: dropped
    epoch: int = 1  # of this instance's ownership of the session


class SessionActor:
    def __init__(
        self,
        session_id: str,
        pair: LanguagePair,
        sample_rate_hz: int,
        options: SessionOptions,
        store: JobStore,
        dispatcher: Dispatcher,
        metrics: SchedulerMetrics,
        clock: Clock,
        limits: SessionLimits,
        on_overflow: Callable[[], None],
        start: Start | None = None,
    ) -> None:
        start = start or Start()
        self.start = start
        self.session_id = session_id
        self.pair = pair
        self.sample_rate_hz = sample_rate_hz
        self.options = options
        self._store = store
        self._dispatcher = dispatcher
        self._metrics = metrics
        self._clock = clock
        self._segmenter = Segmenter(
            SegmenterConfig(
                sample_rate_hz,
                options.pause_ms,
                options.hangover_ms,
                options.max_utterance_ms,
                options.silence_threshold_dbfs,
            ),
            start.next_index,
            start.audio_offset,
        )
        self._drop_bytes = 2 * start.drop_samples  # audio sent again that the store has: dropped on arrival
        self._acked = start.audio_offset  # recorded audio the client was told of
        # Utterances whose job is not recorded in Redis and whose answer was not sent yet, by index: where
        # each starts in the session's audio. The client is told no audio past the first of them is recorded.
        self._unrecorded: dict[int, int] = {}
        self._sequencer: ResultSequencer[_Done] = ResultSequencer(
            options.gap_timeout_ms / 1000, start.next_to_send
        )
        self.sent = start.next_to_send  # answers written to the client's stream (the servicer counts)
        self.handed_to: str | None = None  # the session lives on after this stream (see JobSink)
        self.resumed = False  # this stream resumed the session
        self.ended_by_client = False  # the client sent end_of_stream
        self.resume_token = ""  # the latest token issued to the client ('' when sessions are not resumable)
        self.token_issued_ms = 0
        self._inbox: Mailbox[_Event] = Mailbox()  # client events, in order
        self._control: Mailbox[_Event] = Mailbox()  # job outcomes and timers: taken first
        self._limits = limits
        self._audio_slots = asyncio.Semaphore(limits.inbox_chunks)
        self.outbox: Mailbox[Output] = Mailbox()
        self.outbox_bytes = 0  # held in the outbox and not yet handed to gRPC (the writer subtracts)
        self._on_overflow = on_overflow  # the client stopped reading: its stream must end now
        self._overflowed = False
        self._outstanding = 0  # jobs submitted whose outcome has not come back
        self._meta: dict[int, _Meta] = {}
        self._segment_timer: asyncio.TimerHandle | None = None
        self._gap_timer: asyncio.TimerHandle | None = None
        self._segment_timer_at = 0.0
        self._armed_gap: float | None = None
        self._ending = False
        self._preferred_node: str | None = None
        self.closed = False  # set when the stream ended; the dispatcher drops what it submits after that
        self._steps = StopBetweenSteps()

    @property
    def next_index(self) -> int:
        """The index the session's next utterance takes."""
        return self._segmenter.next_index

    @property
    def cut_offset(self) -> int:
        """How far the session's audio is cut into utterances (samples since its first), as each new job's
        record says it (`audio_offset`)."""
        return self._segmenter.recorded_offset

    # Called by the gRPC read loop.
    async def audio(self, pcm: bytes, is_final: bool) -> None:
        await self._audio_slots.acquire()  # released when the actor takes the chunk: backpressure
        self._post(_Audio(pcm, is_final))

    def playback(self, playing: bool) -> None:
        self._post(_Playback(playing))

    def finalize(self) -> None:
        self._post(_Finalize(end_of_stream=False))

    def end_of_stream(self, said: bool = True) -> None:
        """No more audio. `said`: the client sent `end_of_stream` (the session is then over for good once
        answered); else its stream just ended (a half-close, or a broken connection that reads the same):
        answered the same, the session stays resumable."""
        self.ended_by_client = self.ended_by_client or said
        self._post(_Finalize(end_of_stream=True))

    def fail(self, error: LinguaError, at_once: bool = False) -> None:
        """Ends the session with this error, after the events already in the inbox (`at_once`: before)."""
        self._post(_Fail(error), control=at_once)

    # Called by the dispatcher (JobSink).
    def job_progress(self, index: int, event: JobProgress) -> None:
        self._post(_Progress(index, event), control=True)

    def job_done(self, index: int, output: JobOutput, node_id: str, overhead: Overhead) -> None:
        self._post(_Done(index, output, node_id, overhead), control=True)

    def job_skipped(self, index: int, reason: SkipReason, message: str) -> None:
        self._post(_Skipped(index, reason, message), control=True)

    def job_recorded(self, index: int) -> None:
        self._post(_Recorded(index), control=True)

    # Called when the session resumes, before `run`.
    def inherit(self, index: int, duration_ms: int) -> None:
        """The session had utterance `index` before this stream: its answer comes from the store, or from its
        job (re-watched by this instance), through job_done/job_skipped like any other."""
        self._sequencer.expect(index)
        self._outstanding += 1
        self._meta[index] = _Meta(None, duration_ms)

    def _post(self, event: _Event, control: bool = False) -> None:
        (self._control if control else self._inbox).put(event)
        self._inbox.wake()  # the actor waits on the inbox for both

    async def _next_event(self) -> _Event:
        while not (self._control or (self._inbox and self._has_room())):
            await self._inbox.wait()
        return self._control.take() if self._control else self._inbox.take()

    def _has_room(self) -> bool:
        """Whether the client's next message may be taken. A session that waits for room (options) takes
        none while its window of outstanding utterances is full, so no utterance of it is ever skipped
        SESSION_BACKLOG: a message cuts at most one utterance, and only jobs of cuts raise the count, each
        cut leaving no speech in the segmenter for a pause timer to cut while the client is held (its
        writes then wait on gRPC flow control, the inbox being full)."""
        return not self.options.wait_for_room or self._outstanding < self._limits.max_outstanding

    def stop(self) -> None:
        """Ends `run`: at once while it waits for events, else after the event in hand (a job being placed
        is then ended by the dispatcher, which sees the session closed)."""
        self._steps.stop()

    async def run(self) -> None:
        self._steps.bind()
        try:
            while not (self._ending and self._sequencer.all_answered):
                event = await self._next_event()
                if isinstance(event, _Fail):
                    self.outbox.put(Closed(event.error))
                    return
                with self._steps:
                    await self._handle(event)
                    self._arm_timers()
            self.outbox.put(Closed())
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("session failed", extra={"session_id": self.session_id})
            self.outbox.put(Closed(LinguaError("internal error in the session; see scheduler logs")))
        finally:
            for timer in (self._segment_timer, self._gap_timer):
                if timer is not None:
                    timer.cancel()

    async def _handle(self, event: _Event) -> None:
        now = self._clock.monotonic()
        seg = self._segmenter
        utterances: list[Utterance] = []
        if isinstance(event, _Audio):
            self._audio_slots.release()
            pcm = event.pcm
            if self._drop_bytes:  # sent again on a resume, and already recorded
                pcm, self._drop_bytes = pcm[self._drop_bytes :], max(0, self._drop_bytes - len(pcm))
            utterances = seg.on_audio(pcm, now, event.is_final)
        elif isinstance(event, _Playback):
            utterances = seg.on_playback(event.playing, now)
        elif isinstance(event, _Finalize):
            reason = EndReason.END_OF_STREAM if event.end_of_stream else EndReason.FINAL
            utterances = seg.finalize(now, reason)
            self._ending = self._ending or event.end_of_stream
        elif isinstance(event, _SegmentTimer):
            utterances = seg.on_timer(event.generation, now)
        elif isinstance(event, _GapTimer):
            self._send(self._sequencer.on_tick(now))
        elif isinstance(event, _Progress):
            if self._sequencer.unanswered(event.index):
                self._emit(ProgressOut(event.index, event.event.stage, event.event.text))
        elif isinstance(event, _Done):
            self._outstanding -= 1
            self._preferred_node = event.node_id
            self._send(self._sequencer.complete(event.index, event, now))
        elif isinstance(event, _Skipped):
            self._outstanding -= 1
            self._send(self._sequencer.skip(event.index, event.reason, event.message, now))
        elif isinstance(event, _Recorded):
            self._unrecorded.pop(event.index, None)
        for utterance in utterances:
            await self._start_job(utterance)
        # AudioRecorded is a promise: the audio before it is in Redis (every utterance it covers has its job
        # recorded, or its answer sent ahead of it on this stream) or was silence. A client drops that audio,
        # so an utterance Redis has not recorded yet (an outage) must not be covered: after a resume elsewhere
        # its audio would be gone and the next utterance would take its index.
        recorded = seg.recorded_offset
        if self._unrecorded:
            recorded = min(recorded, min(self._unrecorded.values()))
        if recorded > self._acked:
            self._acked = recorded
            self._emit(RecordedOut(self._acked, min(self._unrecorded, default=seg.next_index)))

    async def _start_job(self, u: Utterance) -> None:
        self._metrics.utterances.inc()
        self._sequencer.expect(u.index)
        self._meta[u.index] = _Meta(u.ended_at, u.duration_ms)
        self._unrecorded[u.index] = u.end_offset - len(u.audio) // 2
        if self._outstanding >= self._limits.max_outstanding:
            self._metrics.skips.labels(SkipReason.SESSION_BACKLOG.value).inc()
            why = (
                f"{self._outstanding} utterances of this session are already waiting or running (the limit):"
                " send audio at real-time pace, or wait for results"
            )
            self._send(
                self._sequencer.skip(u.index, SkipReason.SESSION_BACKLOG, why, self._clock.monotonic())
            )
            return
        spec = JobSpec(
            self.session_id,
            u.index,
            self.pair,
            self.sample_rate_hz,
            self.options.tts_enabled,
            u.audio,
            u.end_offset,
            u.duration_ms,
        )
        try:
            ticket = Ticket(
                spec,
                self,
                queue_timeout_s=self.options.queue_timeout_ms / 1000,
                preferred_node=self._preferred_node,
                ended_at=u.ended_at,
                answers_sent=self.sent,
            )
            self._outstanding += 1
            await self._dispatcher.submit(ticket)
            if ticket.recorded:
                self._unrecorded.pop(u.index, None)
        except RedisError as exc:
            self._outstanding -= 1
            log.error("job not created", extra={"job_id": spec.job_id, "error": repr(exc)})
            reason, why = SkipReason.FAILED, "the job could not be recorded"
            if isinstance(exc, OutOfMemoryError):
                reason, why = SkipReason.STORAGE_FULL, "the scheduler's store is full: try again later"
            self._metrics.skips.labels(reason.value).inc()
            self._send(self._sequencer.skip(u.index, reason, why, self._clock.monotonic()))

    def _send(self, answers: list[Answer[_Done]]) -> None:
        now = self._clock.monotonic()
        for answer in answers:
            meta = self._meta.pop(answer.index, None)
            self._unrecorded.pop(answer.index, None)  # answered ahead of any AudioRecorded that covers it
            if answer.result is not None:
                done = answer.result
                self._metrics.results_sent.inc()
                ended_at = meta.ended_at if meta is not None else None
                if ended_at is not None:
                    self._metrics.end_to_end_seconds.observe(now - ended_at)
                self._emit(
                    ResultOut(
                        answer.index,
                        done.output,
                        done.node_id,
                        done.overhead,
                        total_ms=int((now - ended_at) * 1000) if ended_at is not None else 0,
                        audio_duration_ms=meta.duration_ms if meta else 0,
                    )
                )
            else:
                reason = answer.skip_reason or SkipReason.FAILED
                if reason is SkipReason.GAP_TIMEOUT:
                    self._metrics.skips.labels(reason.value).inc()
                self._emit(SkippedOut(answer.index, reason, answer.message))

    def _emit(self, out: Output) -> None:
        """Queues an output for the client, within the session's unread-output bound."""
        if self._overflowed:
            return
        self.outbox_bytes += output_bytes(out)
        if self.outbox_bytes > self._limits.outbox_max_bytes:
            self._overflowed = True
            log.warning(
                "client does not read its results: ending the session",
                extra={"session_id": self.session_id, "unread_bytes": self.outbox_bytes},
            )
            self._on_overflow()
            return
        self.outbox.put(out)

    def _arm_timers(self) -> None:
        loop = asyncio.get_running_loop()
        now = self._clock.monotonic()
        # The segment timer is not re-created on every chunk (each one moves the pause deadline): an armed
        # timer that fires early re-arms itself for the deadline in force then.
        deadline = self._segmenter.deadline
        if deadline is not None and (self._segment_timer is None or self._segment_timer_at > deadline.at):
            if self._segment_timer is not None:
                self._segment_timer.cancel()
            self._segment_timer_at = deadline.at
            self._segment_timer = loop.call_later(max(0.0, deadline.at - now), self._segment_timer_fired)
        gap_at = self._sequencer.deadline
        if gap_at != self._armed_gap:
            if self._gap_timer is not None:
                self._gap_timer.cancel()
            self._gap_timer = None
            if gap_at is not None:
                self._gap_timer = loop.call_later(max(0.0, gap_at - now), self._post, _GapTimer(), True)
            self._armed_gap = gap_at

    def _segment_timer_fired(self) -> None:
        self._segment_timer = None
        deadline = self._segmenter.deadline
        if deadline is None:
            return
        wait = deadline.at - self._clock.monotonic()
        if wait > 0.001:  # the deadline moved on since this timer was armed
            self._segment_timer_at = deadline.at
            self._segment_timer = asyncio.get_running_loop().call_later(wait, self._segment_timer_fired)
        else:
            self._post(_SegmentTimer(deadline.generation), control=True)
