"""Scheduler: wires Redis, the registry, node streams and the gRPC server, and stops them in order."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from redis.asyncio import Redis
from redis.exceptions import RedisError

from lingua_grpc.api import NodeServicer, RegistryServicer, SessionServicer
from lingua_grpc.clock import Clock, SystemClock
from lingua_grpc.config import Settings
from lingua_grpc.dispatch import Dispatcher, DispatchSettings
from lingua_grpc.fleet import (
    Courier,
    FleetTransport,
    Holdings,
    Inbox,
    InboxSettings,
    InstanceHeartbeat,
    InstanceRegistry,
    Recovery,
    Relay,
)
from lingua_grpc.health import NotServing, Readiness
from lingua_grpc.jobs import JobStore, ResultLimits
from lingua_grpc.looplag import Saturation, Signal, watch_loop
from lingua_grpc.metrics import SchedulerMetrics
from lingua_grpc.nodes import HubSettings, NodeHub, NodeLinks
from lingua_grpc.pb import (
    node_pb2,
    node_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
    session_pb2,
    session_pb2_grpc,
)
from lingua_grpc.registry import NodeRegistry, SnapshotCache, load_pools_file
from lingua_grpc.security import AccessGate, AuthInterceptor, CredentialBook, MessageBounds, is_loopback
from lingua_grpc.sessions import (
    Resumability,
    ResumeTokens,
    SessionLimits,
    SessionManager,
    SessionStore,
    fleet_resume_key,
)
from lingua_grpc.store import (
    EmbeddedRedis,
    InstanceKeys,
    JobKeys,
    MemoryReading,
    MemoryWatch,
    RegistryKeys,
    ScriptBook,
    SessionRetention,
    connect_redis,
    fit_warning,
)
from lingua_grpc.tasks import cancel_and_wait

log = logging.getLogger(__name__)

SERVICE_NAMES = (
    session_pb2.DESCRIPTOR.services_by_name["SessionService"].full_name,
    node_pb2.DESCRIPTOR.services_by_name["NodeService"].full_name,
    registry_pb2.DESCRIPTOR.services_by_name["RegistryService"].full_name,
)


@dataclass(frozen=True, slots=True)
class Endpoints:
    grpc: str
    metrics: str | None
    redis_url: str
    embedded_redis: bool


class Scheduler:
    """One scheduler instance. `start()` then `stop()`; `stop()` is idempotent."""

    def __init__(self, settings: Settings, clock: Clock | None = None) -> None:
        self.settings = settings
        self.clock = clock or SystemClock()
        self.metrics = SchedulerMetrics()
        self._health = health_aio.HealthServicer()
        session_service = SERVICE_NAMES[0]
        self.readiness = Readiness(
            self._health,
            {
                NotServing.REDIS_UNREACHABLE: SERVICE_NAMES,
                NotServing.STORAGE_FULL: (session_service,),
                NotServing.REDIS_NEAR_FULL: (session_service,),
                NotServing.OVERLOADED: (session_service,),
            },
            self.metrics.not_serving,
        )
        self.load = Saturation(
            self.clock,
            {
                Signal.LOOP_LAG: settings.overload_loop_lag_ms / 1000,
                Signal.LOOP_BUSY: settings.overload_loop_busy_percent / 100,
            },
            settings.overload_window_ms / 1000,
            self._load_changed,
        )
        self._storage_probe: asyncio.Task[None] | None = None
        self._store: JobStore | None = None
        self._stack = contextlib.AsyncExitStack()
        self._grace_s = settings.shutdown_grace_ms / 1000
        self._stopped = asyncio.Event()
        self._stopping = False
        self._background: set[asyncio.Task[None]] = set()
        # Read at construction, so a bad auth file stops the start before anything else runs.
        self.gate = AccessGate(
            CredentialBook.load(settings.auth_file) if settings.auth_file else None,
            self.metrics,
            refusal_read_s=settings.refusal_read_ms / 1000,
        )
        self._resume_key = _read_resume_key(settings.resume_key_file) if settings.resume_key_file else None
        self.cache: SnapshotCache | None = None
        self.hub: NodeHub | None = None
        self.dispatcher: Dispatcher | None = None
        self.relay: Relay | None = None
        self.sessions: SessionManager | None = None
        self.session_records: SessionStore | None = None
        self.endpoints: Endpoints | None = None

    async def start(self) -> Endpoints:
        """Builds and starts every part in dependency order; each part's stop goes on a stack, so `stop()`
        (or a failed start) unwinds them in reverse."""
        try:
            return await self._start(self._stack)
        except BaseException:
            await self._stack.aclose()
            raise

    async def _start(self, stack: contextlib.AsyncExitStack) -> Endpoints:
        s = self.settings
        lag_watch = asyncio.create_task(
            watch_loop(self._loop_sample, s.loop_lag_interval_ms / 1000), name="loop-watch"
        )
        stack.push_async_callback(cancel_and_wait, lag_watch)
        pool_specs = load_pools_file(s.pools_file) if s.pools_file else ()
        redis_url = s.redis_url
        embedded = None
        if s.embedded_redis:
            embedded = EmbeddedRedis(s.redis_server_path, maxmemory_mb=s.embedded_redis_maxmemory_mb)
            redis_url = await embedded.start()
            stack.push_async_callback(embedded.stop)
        redis = await connect_redis(
            redis_url,
            s.redis_socket_timeout_ms / 1000,
            s.redis_backoff_max_ms / 1000,
            s.redis_max_connections,
            cluster=s.redis_cluster,
            retries=s.redis_command_retries,
        )
        stack.push_async_callback(redis.aclose)
        stack.push_async_callback(self._stop_storage_probe)  # it writes to Redis: stopped before it closes
        await self._warn_on_eviction_policy(redis)
        memory = MemoryWatch(
            redis,
            s.redis_memory_poll_ms / 1000,
            s.redis_near_full_percent,
            self._memory_read,
            self._memory_near_full,
        )
        self._warn_on_memory_fit(await memory.start(), embedded is not None)
        stack.push_async_callback(memory.stop)
        keys = RegistryKeys(s.key_prefix)
        scripts = ScriptBook(redis)
        await scripts.load(redis)
        registry = NodeRegistry(redis, keys, scripts)
        cache = self.cache = SnapshotCache(
            registry,
            pool_specs,
            s.snapshot_poll_ms / 1000,
            s.snapshot_refresh_ms / 1000,
            self.metrics,
            self.clock,
        )
        await cache.start()
        stack.push_async_callback(cache.stop)
        cache.add_redis_listener(self._redis_state_changed)
        store = self._store = JobStore(
            redis,
            JobKeys(s.key_prefix),
            keys,
            scripts,
            s.job_ttl_ms,
            s.job_audio_ttl_ms,
            self.metrics,
            self._storage_full,
            InstanceKeys(s.key_prefix, s.instance_id),
            s.result_audio_ttl_ms,
        )
        inbox_settings = InboxSettings(
            s.fleet_inbox_max_entries, s.fleet_inbox_read_count, s.fleet_inbox_block_ms
        )
        courier = Courier(scripts, s.key_prefix, inbox_settings, self.metrics)
        await courier.start()
        stack.push_async_callback(courier.stop)  # last of the fleet's parts: the others send through it
        links = NodeLinks()
        transport = FleetTransport(s.instance_id, links, cache, courier, self.clock)
        dispatcher = self.dispatcher = Dispatcher(
            store,
            cache,
            transport,
            DispatchSettings(
                s.job_max_attempts,
                s.job_deadline_ms,
                s.queue_retry_ms,
                s.slot_release_retry_ms,
                s.pair_queue_max_jobs,
                s.job_deadline_audio_factor,
                s.retry_budget_tokens,
                s.retry_budget_refill_percent,
                s.store_wait_ms,
                s.store_wait_max_bytes,
            ),
            self.metrics,
            self.clock,
        )
        await dispatcher.start()
        stack.push_async_callback(dispatcher.stop)
        relay = self.relay = Relay(
            s.instance_id,
            dispatcher,
            links,
            courier,
            store,
            self.metrics,
            self.clock,
            transport.holder,
            s.job_deadline_ms,
        )
        stack.push_async_callback(relay.stop)
        inbox = Inbox(
            redis,
            InstanceKeys(s.key_prefix, s.instance_id),
            relay.apply,
            inbox_settings,
            self.metrics,
            self.clock,
        )
        await inbox.start()
        stack.push_async_callback(inbox.stop)
        hub = self.hub = NodeHub(
            registry,
            cache,
            links,
            relay,
            HubSettings(
                instance_id=s.instance_id,
                heartbeat_interval_ms=s.heartbeat_interval_ms,
                lease_ms=s.node_lease_ms,
                lease_check_interval_ms=s.lease_check_interval_ms,
                reconnect_grace_ms=s.node_reconnect_grace_ms,
                registration_limits=s.registration_limits,
                result_limits=ResultLimits(s.node_max_result_text_bytes, s.node_max_result_tts_bytes),
            ),
            self.metrics,
            self.clock,
        )
        await hub.start()
        stack.push_async_callback(hub.stop)  # after the server: the streams' own deregistrations first
        resume_key = self._resume_key or await fleet_resume_key(redis, keys.resume_key)
        records = SessionStore(redis, JobKeys(s.key_prefix), scripts, s.instance_id, s.job_ttl_ms)
        self.session_records = records
        self.sessions = SessionManager(
            s.session_defaults,
            cache,
            store,
            dispatcher,
            self.metrics,
            self.clock,
            SessionLimits(s.session_inbox_chunks, s.session_max_outstanding, s.session_outbox_max_bytes),
            s.max_sessions,
            self.load,
            s.overload_queue_wait_ms,
            Resumability(
                records,
                ResumeTokens(resume_key, s.session_resume_ttl_ms, self.clock),
                relay,
                s.session_resume_max_answers,
            ),
        )
        relay.on_moved = self.sessions.moved
        relay.session_here = self.sessions.is_open

        server = grpc.aio.server(
            interceptors=[AuthInterceptor(self.gate, self._message_bounds())],
            options=[
                ("grpc.max_receive_message_length", s.max_message_bytes),
                ("grpc.max_send_message_length", s.max_message_bytes),
                # gRPC shares ports by default on Linux: two schedulers started on one port by mistake
                # would split its calls silently. Only --workers' processes share one (`reuse_port`).
                ("grpc.so_reuseport", int(s.reuse_port)),
            ],
        )
        node_pb2_grpc.add_NodeServiceServicer_to_server(
            NodeServicer(
                hub, self.gate, s.heartbeat_interval_ms, s.node_lease_ms, s.instance_id, s.registration_limits
            ),
            server,
        )
        instances = InstanceRegistry(redis, keys, scripts)
        registry_pb2_grpc.add_RegistryServiceServicer_to_server(
            RegistryServicer(cache, hub, instances, store, records, s.session_resume_max_answers), server
        )
        session_pb2_grpc.add_SessionServiceServicer_to_server(
            SessionServicer(self.sessions, s.max_chunk_bytes, s.session_idle_timeout_ms), server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self._health, server)
        reflection.enable_server_reflection(
            (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
        host, _, _ = s.listen.rpartition(":")
        tls = s.server_tls
        port = (
            server.add_secure_port(s.listen, tls.credentials())
            if tls is not None
            else server.add_insecure_port(s.listen)
        )
        if port == 0:
            raise OSError(f"cannot listen on {s.listen}")
        await server.start()
        stack.push_async_callback(self._stop_server, server)
        await self.readiness.start()
        sessions = self.sessions
        heartbeat = InstanceHeartbeat(
            instances,
            s.instance_id,
            s.advertise_address or f"{host}:{port}",
            s.instance_heartbeat_ms / 1000,
            s.instance_lease_ms,
            s.instance_lease_ms + s.job_ttl_ms,  # a dead instance stays listed while its jobs could matter
            self.clock.now_ms(),
            lambda: Holdings(len(links), sessions.open_sessions, dispatcher.running),
            self.metrics,
            self._claimed_as_dead,
        )
        await heartbeat.start()
        recovery = Recovery(
            redis,
            s.key_prefix,
            scripts,
            instances,
            store,
            relay,
            transport,
            courier,
            s.instance_id,
            s.instance_lease_ms + s.job_ttl_ms,
            s.instance_heartbeat_ms / 1000,
            s.fleet_inbox_read_count,
            self.metrics,
            self.clock,
            s.accept_timeout_ms,
            lease_ms=s.instance_lease_ms,
        )
        await recovery.start()
        stack.push_async_callback(recovery.stop)

        async def settle_inbox() -> None:  # after leaving the fleet: what landed in the inbox before
            await inbox.stop()
            await recovery.settle_own_inbox()

        stack.push_async_callback(settle_inbox)
        stack.push_async_callback(heartbeat.stop)  # first to go: a stopping instance leaves the fleet's list

        metrics_addr = None
        if s.metrics_port >= 0:
            metrics_port = self.metrics.serve(s.metrics_host, s.metrics_port)
            stack.callback(self.metrics.stop_serving)
            metrics_addr = f"http://{s.metrics_host}:{metrics_port}/metrics"
        self.endpoints = Endpoints(f"{host}:{port}", metrics_addr, redis_url, embedded is not None)
        open_outside = not is_loopback(host) and (self.gate.book is None or tls is None)
        self.metrics.security.labels(
            "on" if self.gate.book is not None else "off",
            ("mtls" if s.tls_client_ca else "on") if tls is not None else "off",
            "true" if open_outside else "false",
        ).set(1)
        if open_outside:
            log.warning(
                "INSECURE: serving outside loopback without %s: any process that reaches %s can act as a"
                " client, a node (and receive users' audio) or an operator",
                " and ".join(
                    w for w, off in (("credentials", self.gate.book is None), ("TLS", tls is None)) if off
                ),
                self.endpoints.grpc,
            )
        log.info(
            "scheduler serving",
            extra={
                "listen": self.endpoints.grpc,
                "metrics": metrics_addr,
                "redis_url": redis_url if embedded else "(configured)",
                "embedded_redis": embedded is not None,
                "instance_id": s.instance_id,
            },
        )
        return self.endpoints

    async def stop(self, grace_s: float | None = None) -> None:
        """Graceful phase first (health NOT_SERVING, no new sessions, running jobs get `grace_s` to end,
        then sessions and node streams are told to go), then every part stops in reverse start order."""
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        if grace_s is not None:
            self._grace_s = grace_s
        try:
            await self._health.enter_graceful_shutdown()
            if self.sessions is not None:
                self.sessions.accepting = False  # new sessions: UNAVAILABLE
            if self.dispatcher is not None and not await self.dispatcher.wait_idle(self._grace_s):
                log.warning(
                    "grace period over with jobs still running", extra={"running": self.dispatcher.running}
                )
            if self.sessions is not None:
                self.sessions.close_all("the scheduler is shutting down: reconnect to continue")
            if self.hub is not None:
                self.hub.close_all()
            if self.cache is not None:
                await self.cache.end_watches()  # WatchSnapshots ends UNAVAILABLE, not cancelled
            await self._stack.aclose()
        finally:
            self._stopped.set()
            log.info("scheduler stopped")

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    def reload_credentials(self) -> int:
        """Re-reads the auth file (SIGHUP); open calls of revoked or changed credentials end with
        UNAUTHENTICATED. Returns how many ended. A bad file keeps the credentials in force (ValueError)."""
        if not self.settings.auth_file:
            raise ValueError("no --auth-file: there are no credentials to reload")
        return self.gate.reload(CredentialBook.load(self.settings.auth_file))

    def _claimed_as_dead(self) -> None:
        if not self._stopping:
            task = asyncio.create_task(self.stop(grace_s=0), name="stop-claimed")
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    def _redis_state_changed(self, reachable: bool) -> None:
        if not self._stopping:
            self.readiness.set(
                NotServing.REDIS_UNREACHABLE,
                not reachable,
                "redis reachable again"
                if reachable
                else "redis unreachable: health NOT_SERVING, new sessions refused until it is back",
            )

    def _message_bounds(self) -> MessageBounds:
        s = self.settings
        return MessageBounds.for_limits(
            max_chunk_bytes=s.max_chunk_bytes,
            max_result_bytes=2 * s.node_max_result_text_bytes + s.node_max_result_tts_bytes,
            max_pairs=s.node_max_pairs,
            max_languages=s.node_max_languages,
            max_labels=s.node_max_labels,
            max_gpus=s.node_max_gpus,
            max_field_bytes=s.node_max_field_bytes,
            max_node_concurrency=s.max_node_concurrency,
        )

    def _loop_sample(self, signal: Signal, value: float) -> None:
        if signal is Signal.LOOP_LAG:
            self.metrics.loop_lag.observe(value)
        else:
            self.metrics.loop_busy.set(self.load.mean(Signal.LOOP_BUSY))
        self.load.observe(signal, value)

    def _load_changed(self, overloaded: bool, why: str) -> None:
        if not self._stopping:
            self.readiness.set(
                NotServing.OVERLOADED,
                overloaded,
                f"saturated: {why}: new sessions refused" if overloaded else f"no longer saturated: {why}",
            )

    async def _stop_server(self, server: grpc.aio.Server) -> None:
        await server.stop(min(self._grace_s, 1.0))  # the grace `stop()` was given, read now

    async def _stop_storage_probe(self) -> None:
        await cancel_and_wait(self._storage_probe)

    def _storage_full(self) -> None:
        if self._stopping or self._storage_probe is not None:
            return
        self.readiness.set(
            NotServing.STORAGE_FULL,
            True,
            "Redis refuses writes for memory (OOM): new utterances are skipped STORAGE_FULL until job TTLs"
            " free memory or maxmemory is raised",
        )
        self._storage_probe = asyncio.create_task(self._probe_storage(), name="storage-probe")

    async def _probe_storage(self) -> None:
        interval_s = self.settings.snapshot_poll_ms / 1000
        try:
            while True:
                await asyncio.sleep(interval_s)
                try:
                    if self._store is not None and await self._store.writable(
                        ttl_ms=self.settings.snapshot_poll_ms
                    ):
                        break
                except (RedisError, OSError):
                    continue  # unreachable is its own reason; keep probing
            self.readiness.set(NotServing.STORAGE_FULL, False, "Redis takes writes again")
        finally:
            self._storage_probe = None

    def _memory_read(self, reading: MemoryReading) -> None:
        self.metrics.redis_used_memory.set(reading.used_bytes)
        self.metrics.redis_maxmemory.set(reading.max_bytes)

    def _memory_near_full(self, near_full: bool, reading: MemoryReading) -> None:
        if not self._stopping:
            self.readiness.set(
                NotServing.REDIS_NEAR_FULL,
                near_full,
                f"{reading.describe()}: near full, new utterances are skipped STORAGE_FULL once it is"
                if near_full
                else f"{reading.describe()}: no longer near full",
            )

    def _warn_on_memory_fit(self, reading: MemoryReading | None, embedded: bool) -> None:
        s = self.settings
        max_bytes = reading.max_bytes if reading is not None else 0
        if not max_bytes and embedded:
            max_bytes = s.embedded_redis_maxmemory_mb * 1024 * 1024
        retention = SessionRetention.estimate(
            max_utterance_ms=s.session_max_utterance_ms,
            result_audio_ttl_ms=s.result_audio_ttl_ms,
            job_ttl_ms=s.job_ttl_ms,
        )
        why = fit_warning(retention, s.max_sessions, max_bytes)
        if why is not None:
            log.warning(why, extra={"max_sessions": s.max_sessions, "maxmemory_bytes": max_bytes})

    @staticmethod
    async def _warn_on_eviction_policy(redis: Redis) -> None:
        try:
            reply: dict[Any, Any] = await redis.config_get("maxmemory-policy")
            raw = next(iter(reply.values()), b"")
            policy = raw.decode() if isinstance(raw, bytes) else str(raw)
        except Exception:  # CONFIG may be disabled on managed Redis; the warning is a courtesy
            return
        if policy and policy != "noeviction":
            log.warning(
                "Redis may evict keys under memory pressure (maxmemory-policy=%s): registry and job state"
                " can vanish; use noeviction",
                policy,
            )


def _read_resume_key(path: str) -> bytes:
    """The fleet's resume-token key from its file (surrounding whitespace is not part of it)."""
    try:
        key = Path(path).read_bytes().strip()
    except OSError as exc:
        raise ValueError(f"resume key file {path}: {exc.strerror}") from None
    if len(key) < 16:
        raise ValueError(f"resume key file {path}: the key must have at least 16 bytes, it has {len(key)}")
    return key
