"""Scheduler: wires Redis, the registry, node streams and the gRPC server, and stops them in order."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from redis.asyncio import Redis

from lingua_grpc.api import NodeServicer, RegistryServicer, SessionServicer
from lingua_grpc.clock import Clock, SystemClock
from lingua_grpc.config import Settings
from lingua_grpc.dispatch import Dispatcher, DispatchSettings
from lingua_grpc.jobs import JobStore, ResultLimits
from lingua_grpc.looplag import watch_loop_lag
from lingua_grpc.metrics import SchedulerMetrics
from lingua_grpc.nodes import HubSettings, NodeHub
from lingua_grpc.pb import (
    node_pb2,
    node_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
    session_pb2,
    session_pb2_grpc,
)
from lingua_grpc.registry import NodeRegistry, SnapshotCache, load_pools_file
from lingua_grpc.security import AccessGate, AuthInterceptor, CredentialBook, is_loopback
from lingua_grpc.sessions import SessionLimits, SessionManager
from lingua_grpc.store import EmbeddedRedis, JobKeys, RegistryKeys, ScriptBook, connect_redis
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
        self._embedded: EmbeddedRedis | None = None
        self._redis: Redis | None = None
        self._server: grpc.aio.Server | None = None
        self._health = health_aio.HealthServicer()
        self._metrics_server: object | None = None
        self._stopped = asyncio.Event()
        self._stopping = False
        self._health_tasks: set[asyncio.Task[None]] = set()
        self._lag_watch: asyncio.Task[None] | None = None
        # Read at construction, so a bad auth file stops the start before anything else runs.
        self.gate = AccessGate(
            CredentialBook.load(settings.auth_file) if settings.auth_file else None, self.metrics
        )
        self.cache: SnapshotCache | None = None
        self.hub: NodeHub | None = None
        self.dispatcher: Dispatcher | None = None
        self.sessions: SessionManager | None = None
        self.endpoints: Endpoints | None = None

    async def start(self) -> Endpoints:
        s = self.settings
        self._lag_watch = asyncio.create_task(
            watch_loop_lag(self.metrics.loop_lag, s.loop_lag_interval_ms / 1000), name="loop-lag"
        )
        pool_specs = load_pools_file(s.pools_file) if s.pools_file else ()
        redis_url = s.redis_url
        if s.embedded_redis:
            self._embedded = EmbeddedRedis(s.redis_server_path, maxmemory_mb=s.embedded_redis_maxmemory_mb)
            redis_url = await self._embedded.start()
        self._redis = await connect_redis(
            redis_url,
            s.redis_socket_timeout_ms / 1000,
            s.redis_backoff_max_ms / 1000,
            s.redis_max_connections,
        )
        await self._warn_on_eviction_policy(self._redis)
        keys = RegistryKeys(s.key_prefix)
        scripts = ScriptBook(self._redis)
        await scripts.load(self._redis)
        registry = NodeRegistry(self._redis, keys, scripts)
        self.cache = SnapshotCache(
            registry,
            pool_specs,
            s.snapshot_poll_ms / 1000,
            s.snapshot_refresh_ms / 1000,
            self.metrics,
            self.clock,
        )
        await self.cache.start()
        self.cache.add_redis_listener(self._redis_state_changed)
        self.hub = NodeHub(
            registry,
            self.cache,
            HubSettings(
                instance_id=s.instance_id,
                heartbeat_interval_ms=s.heartbeat_interval_ms,
                lease_ms=s.node_lease_ms,
                lease_check_interval_ms=s.lease_check_interval_ms,
                registration_limits=s.registration_limits,
                result_limits=ResultLimits(s.node_max_result_text_bytes, s.node_max_result_tts_bytes),
            ),
            self.metrics,
            self.clock,
        )
        await self.hub.start()
        store = JobStore(
            self._redis,
            JobKeys(s.key_prefix),
            keys,
            scripts,
            s.job_ttl_ms,
            s.job_audio_ttl_ms,
            self.metrics,
        )
        self.dispatcher = Dispatcher(
            store,
            self.cache,
            self.hub,
            DispatchSettings(
                s.job_max_attempts,
                s.accept_timeout_ms,
                s.job_deadline_ms,
                s.queue_retry_ms,
                s.slot_release_retry_ms,
                s.pair_queue_max_jobs,
            ),
            self.metrics,
            self.clock,
        )
        self.hub.set_job_listener(self.dispatcher)
        await self.dispatcher.start()
        self.sessions = SessionManager(
            s.session_defaults,
            self.cache,
            store,
            self.dispatcher,
            self.metrics,
            self.clock,
            SessionLimits(s.session_inbox_chunks, s.session_max_outstanding, s.session_outbox_max_bytes),
            s.max_sessions,
        )

        server = grpc.aio.server(
            interceptors=[AuthInterceptor(self.gate)],
            options=[
                ("grpc.max_receive_message_length", s.max_message_bytes),
                ("grpc.max_send_message_length", s.max_message_bytes),
            ],
        )
        node_pb2_grpc.add_NodeServiceServicer_to_server(
            NodeServicer(self.hub, self.gate, s.heartbeat_interval_ms, s.node_lease_ms, s.instance_id), server
        )
        registry_pb2_grpc.add_RegistryServiceServicer_to_server(
            RegistryServicer(self.cache, self.hub), server
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
        self._server = server
        for name in ("", *SERVICE_NAMES):
            await self._health.set(name, health_pb2.HealthCheckResponse.SERVING)

        metrics_addr = None
        if s.metrics_port >= 0:
            metrics_port = self.metrics.serve(s.metrics_host, s.metrics_port)
            metrics_addr = f"http://{s.metrics_host}:{metrics_port}/metrics"
        self.endpoints = Endpoints(f"{host}:{port}", metrics_addr, redis_url, self._embedded is not None)
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
                "redis_url": redis_url if self._embedded else "(configured)",
                "embedded_redis": self._embedded is not None,
                "instance_id": s.instance_id,
            },
        )
        return self.endpoints

    async def stop(self, grace_s: float | None = None) -> None:
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        grace = self.settings.shutdown_grace_ms / 1000 if grace_s is None else grace_s
        try:
            await self._health.enter_graceful_shutdown()
            if self.sessions is not None:
                self.sessions.accepting = False  # new sessions: UNAVAILABLE
            if self.dispatcher is not None and not await self.dispatcher.wait_idle(grace):
                log.warning(
                    "grace period over with jobs still running", extra={"running": self.dispatcher.running}
                )
            if self.sessions is not None:
                self.sessions.close_all("the scheduler is shutting down: reconnect to continue")
            if self.hub is not None:
                self.hub.close_all()
            if self._server is not None:
                await self._server.stop(min(grace, 1.0))
            if self.hub is not None:
                await self.hub.stop()  # after the server: the streams' own deregistrations finish first
            if self.dispatcher is not None:
                await self.dispatcher.stop()
            if self.cache is not None:
                await self.cache.stop()
            if self._redis is not None:
                await self._redis.aclose()
            if self._embedded is not None:
                await self._embedded.stop()
            self.metrics.stop_serving()
            await cancel_and_wait(self._lag_watch)
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

    def _redis_state_changed(self, reachable: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if reachable
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        if reachable:
            log.info("redis reachable again: serving")
        else:
            log.error("redis unreachable: health NOT_SERVING, new sessions refused until it is back")
        if self._stopping:
            return
        task = asyncio.create_task(self._set_health(status))
        self._health_tasks.add(task)
        task.add_done_callback(self._health_tasks.discard)

    async def _set_health(self, status: int) -> None:
        for name in ("", *SERVICE_NAMES):
            await self._health.set(name, status)

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
