"""SessionManager: checks a session's start, opens its actor, and closes it."""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field

from lingua_grpc.clock import Clock
from lingua_grpc.dispatch import Dispatcher
from lingua_grpc.errors import FailedPrecondition, InvalidArgument, Unavailable
from lingua_grpc.jobs import JobStore
from lingua_grpc.metrics import SchedulerMetrics
from lingua_grpc.registry import LanguagePair, SnapshotCache
from lingua_grpc.sessions._actor import SessionActor
from lingua_grpc.sessions._options import SAMPLE_RATES_HZ, SessionOptions

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


class SessionManager:
    def __init__(
        self,
        defaults: SessionOptions,
        cache: SnapshotCache,
        store: JobStore,
        dispatcher: Dispatcher,
        metrics: SchedulerMetrics,
        clock: Clock,
        inbox_chunks: int,
    ) -> None:
        self._defaults = defaults
        self._cache = cache
        self._store = store
        self._dispatcher = dispatcher
        self._metrics = metrics
        self.clock = clock
        self._inbox_chunks = inbox_chunks
        self._sessions: dict[str, SessionActor] = {}
        self.accepting = True

    @property
    def open_sessions(self) -> int:
        return len(self._sessions)

    def open(self, start: StartRequest) -> SessionActor:
        if not self.accepting:
            raise Unavailable("the scheduler is shutting down: connect again (to another instance)")
        if not self._cache.redis_reachable:
            raise Unavailable("the scheduler cannot reach Redis right now: try again shortly")
        if start.pair is None:
            raise InvalidArgument(
                "start.language_pair is required, e.g. source_language 'en', target_language 'es'"
            )
        start.pair.validate()
        if not start.pcm_s16le:
            raise InvalidArgument("start.audio_format.encoding must be AUDIO_ENCODING_PCM_S16LE")
        low, high = SAMPLE_RATES_HZ
        if not low <= start.sample_rate_hz <= high:
            raise InvalidArgument(
                f"start.audio_format.sample_rate_hz must be {low} to {high}, got {start.sample_rate_hz}"
            )
        if start.channels != 1:
            raise InvalidArgument(f"start.audio_format.channels must be 1 (mono), got {start.channels}")
        options = self._defaults.resolve(start.options)
        if start.resume_token:
            raise FailedPrecondition(
                "resume_token: resuming sessions is not supported yet; start a new session"
            )
        if not self._cache.current.serves(start.pair):
            raise Unavailable(f"no registered node serves {start.pair}; try again when one registers")
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
            self._inbox_chunks,
        )
        self._sessions[session_id] = actor
        self._metrics.sessions_open.set(len(self._sessions))
        log.info(
            "session started",
            extra={"session_id": session_id, "pair": str(start.pair), "client": start.client_name},
        )
        return actor

    def close_all(self, reason: str) -> None:
        """Ends every session with UNAVAILABLE after what it already has queued for its client."""
        for actor in list(self._sessions.values()):
            actor.fail(Unavailable(reason))

    def close(self, actor: SessionActor) -> None:
        actor.closed = True
        if self._sessions.pop(actor.session_id, None) is not None:
            self._dispatcher.cancel_session(actor.session_id)
            self._metrics.sessions_open.set(len(self._sessions))
            log.info("session ended", extra={"session_id": actor.session_id})
