"""SessionManager: checks a session's start, opens its actor, and closes it."""

from __future__ import annotations

import collections
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field

from lingua_grpc.clock import Clock
from lingua_grpc.dispatch import Dispatcher
from lingua_grpc.errors import FailedPrecondition, InvalidArgument, ResourceExhausted, Unavailable
from lingua_grpc.jobs import JobStore
from lingua_grpc.metrics import SchedulerMetrics
from lingua_grpc.registry import LanguagePair, SnapshotCache
from lingua_grpc.sessions._actor import SessionActor, SessionLimits
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
        limits: SessionLimits,
        max_sessions: int,
    ) -> None:
        self._defaults = defaults
        self._cache = cache
        self._store = store
        self._dispatcher = dispatcher
        self._metrics = metrics
        self.clock = clock
        self.limits = limits
        self._max_sessions = max_sessions
        self._sessions: dict[str, SessionActor] = {}
        self._owners: dict[str, str] = {}  # session id -> the credential that opened it
        self._by_owner: collections.Counter[str] = collections.Counter()
        self.accepting = True

    @property
    def open_sessions(self) -> int:
        return len(self._sessions)

    def open(
        self, start: StartRequest, owner: str, owner_max_sessions: int, on_overflow: Callable[[], None]
    ) -> SessionActor:
        """Opens a session for `owner` (a credential's name), within the instance's and the owner's session
        limits (`owner_max_sessions`, 0 for none). `on_overflow` is called once if the client stops reading
        its results: the caller must then end the stream."""
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
        if len(self._sessions) >= self._max_sessions:
            self._metrics.sessions_refused.labels("instance_full").inc()
            raise ResourceExhausted(
                f"this scheduler instance has {len(self._sessions)} open sessions, its limit: connect to"
                " another instance or try again later"
            )
        if owner_max_sessions and self._by_owner[owner] >= owner_max_sessions:
            self._metrics.sessions_refused.labels("credential_full").inc()
            raise ResourceExhausted(
                f"credential {owner!r} already has {self._by_owner[owner]} open sessions, its limit"
            )
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
        self._sessions[session_id] = actor
        self._owners[session_id] = owner
        self._by_owner[owner] += 1
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
            owner = self._owners.pop(actor.session_id)
            self._by_owner[owner] -= 1
            if not self._by_owner[owner]:
                del self._by_owner[owner]
            self._dispatcher.cancel_session(actor.session_id)
            self._metrics.sessions_open.set(len(self._sessions))
            log.info("session ended", extra={"session_id": actor.session_id})
