"""SessionManager: checks a session's start, opens its actor, and closes it."""

from __future__ import annotations

import asyncio
import collections
import logging
import uuid
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field

from redis.exceptions import RedisError

from lingua_grpc.clock import Clock
from lingua_grpc.dispatch import Dispatcher
from lingua_grpc.errors import FailedPrecondition, InvalidArgument, ResourceExhausted, Unavailable
from lingua_grpc.jobs import JobStore
from lingua_grpc.looplag import Saturation, Signal
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
        load: Saturation | None = None,
        queue_wait_limit_ms: int = 0,
    ) -> None:
        """`load`, when given, refuses new sessions while it reads overloaded; so does a pair whose oldest
        queued job has waited over `queue_wait_limit_ms` (0: never)."""
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
        self._by_owner: collections.Counter[str] = collections.Counter()
        self.accepting = True
        self._tasks: set[asyncio.Task[None]] = set()

    def delivered(self, delivery_s: float) -> None:
        """A result reached its client's stream `delivery_s` after its node sent it (admission's signal).
        One sample counts at most a window: a client that reads late must not outweigh all the others."""
        if self._load is not None:
            self._load.observe(Signal.DELIVERY, min(delivery_s, self._load.window_s))

    @property
    def _retry_after_ms(self) -> int | None:
        return round(self._load.window_s * 1000) if self._load is not None else None

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
        if self._load is not None and self._load.overloaded:
            self._metrics.sessions_refused.labels("overloaded").inc()
            raise ResourceExhausted(
                f"this scheduler instance is saturated ({self._load.describe()}): connect to another"
                " instance or retry after the retry-after-ms trailer",
                retry_after_ms=round(self._load.window_s * 1000),
            )
        waiting, waited_s = self._dispatcher.backlog(start.pair)
        if self._queue_wait_limit_s and waited_s > self._queue_wait_limit_s:
            self._metrics.sessions_refused.labels("pair_saturated").inc()
            raise ResourceExhausted(
                f"the {start.pair} nodes are saturated: {waiting} jobs wait for a slot, the oldest for"
                f" {waited_s * 1000:.0f} ms: retry after the retry-after-ms trailer",
                retry_after_ms=self._retry_after_ms,
            )
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
        self._spawn(self._index(session_id))
        self._owners[session_id] = owner
        self._by_owner[owner] += 1
        self._metrics.sessions_open.set(len(self._sessions))
        log.info(
            "session started",
            extra={"session_id": session_id, "pair": str(start.pair), "client": start.client_name},
        )
        return actor

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

    def close(self, actor: SessionActor) -> None:
        actor.closed = True
        if self._sessions.pop(actor.session_id, None) is not None:
            owner = self._owners.pop(actor.session_id)
            self._by_owner[owner] -= 1
            if not self._by_owner[owner]:
                del self._by_owner[owner]
            self._dispatcher.cancel_session(actor.session_id)
            self._spawn(self._unindex(actor.session_id))
            self._metrics.sessions_open.set(len(self._sessions))
            log.info("session ended", extra={"session_id": actor.session_id})
