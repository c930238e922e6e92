"""Prometheus metrics of one scheduler instance, on a registry of its own."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server


@dataclass
class SchedulerMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self._server: Any = None
        r = self.registry
        self.nodes_connected = Gauge(
            "lingua_nodes_connected", "Node streams held by this instance", registry=r
        )
        self.node_registrations = Counter(
            "lingua_node_registrations_total", "Accepted node registrations", registry=r
        )
        self.node_departures = Counter(
            "lingua_node_departures_total",
            "Nodes removed from the registry, by reason (left, stream_broken, lease_expired)",
            ["reason"],
            registry=r,
        )
        self.registry_version = Gauge(
            "lingua_registry_version", "Registry version of the current snapshot", registry=r
        )
        self.snapshot_builds = Counter("lingua_snapshot_builds_total", "Registry snapshots built", registry=r)
        self.snapshot_build_seconds = Histogram(
            "lingua_snapshot_build_seconds",
            "Time to read Redis and build one snapshot",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=r,
        )
        self.redis_up = Gauge("lingua_redis_up", "1 while Redis answers, 0 otherwise", registry=r)
        self.redis_errors = Counter(
            "lingua_redis_errors_total", "Redis calls that failed, by operation", ["operation"], registry=r
        )
        self.redis_used_memory = Gauge(
            "lingua_redis_used_memory_bytes",
            "Memory Redis uses (INFO used_memory; on Redis Cluster, of the shard nearest its maxmemory), read"
            " every redis_memory_poll_ms",
            registry=r,
        )
        self.redis_maxmemory = Gauge(
            "lingua_redis_maxmemory_bytes",
            "Redis' maxmemory (0: no limit); at it, new utterances are skipped STORAGE_FULL",
            registry=r,
        )

        self.sessions_open = Gauge(
            "lingua_sessions_open", "Client sessions open on this instance", registry=r
        )
        self.utterances = Counter("lingua_utterances_total", "Utterances cut from client audio", registry=r)
        self.jobs_dispatched = Counter(
            "lingua_jobs_dispatched_total", "Job attempts sent to nodes (re-dispatches included)", registry=r
        )
        self.jobs_queued = Gauge("lingua_jobs_queued", "Jobs waiting for a free node slot", registry=r)
        self.jobs_waiting_for_store = Gauge(
            "lingua_store_wait_bytes",
            "Audio held for utterances whose jobs wait for Redis to record them (an outage, a restart)",
            registry=r,
        )
        self.retries_throttled = Counter(
            "lingua_job_retries_throttled_total",
            "Jobs not run again after a live node failed or rejected them: the retry budget was spent",
            registry=r,
        )
        self.retry_budget = Gauge(
            "lingua_retry_budget_tokens", "Tokens left in this instance's retry budget", registry=r
        )
        self.redispatches = Counter(
            "lingua_job_redispatches_total",
            "Job attempts started again after a reject, failure, timeout or node loss",
            registry=r,
        )
        self.timeouts = Counter(
            "lingua_job_timeouts_total", "Job attempts past their deadline on a live node", registry=r
        )
        self.results_fenced = Counter(
            "lingua_results_fenced_total",
            "Results refused because they came from an attempt that is not current",
            registry=r,
        )
        self.results_unwatched = Counter(
            "lingua_results_recorded_unwatched_total",
            "Results recorded for a session whose stream was not on this instance (it ended here, or moved):"
            " delivered when the session resumes, or by the instance that owns it now",
            registry=r,
        )
        self.sessions_resumed = Counter(
            "lingua_sessions_resumed_total",
            "Sessions resumed on this instance, by where they were owned before (same instance or another)",
            ["previous"],
            registry=r,
        )
        self.resume_refused = Counter(
            "lingua_session_resumes_refused_total",
            "Resumes refused, by reason (forged, expired, not_found, ended, credential, mismatch)",
            ["reason"],
            registry=r,
        )
        self.answers_resent = Counter(
            "lingua_answers_resent_total",
            "Answers sent again from the store to resumed sessions, by kind (result, skipped)",
            ["kind"],
            registry=r,
        )
        self.skips = Counter(
            "lingua_utterances_skipped_total", "Utterances skipped, by reason", ["reason"], registry=r
        )
        self.redis_round_trips = Counter(
            "lingua_redis_round_trips_total",
            "Round trips to Redis for jobs, by operation",
            ["operation"],
            registry=r,
        )
        latency_buckets = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
        self.dispatch_seconds = Histogram(
            "lingua_dispatch_seconds",
            "Scheduler's own time from utterance end to the job written to a node's stream, queueing excluded",
            buckets=latency_buckets,
            registry=r,
        )
        self.queue_wait_seconds = Histogram(
            "lingua_queue_wait_seconds",
            "Time a completed job waited for a free node slot",
            buckets=latency_buckets,
            registry=r,
        )
        self.end_to_end_seconds = Histogram(
            "lingua_end_to_end_seconds",
            "Utterance end (as segmentation decided) to its result handed to the client's stream",
            buckets=latency_buckets,
            registry=r,
        )
        self.loop_lag = Histogram(
            "lingua_event_loop_lag_seconds",
            "How late a timer callback ran on the scheduler's event loop (every await pays this when busy)",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=r,
        )
        self.results_sent = Counter(
            "lingua_results_sent_total", "Utterance results sent to clients", registry=r
        )
        self.result_delivery_seconds = Histogram(
            "lingua_result_delivery_seconds",
            "A node's result to its write to the client's stream; includes waiting behind the client's"
            " earlier unread results, so not an admission signal",
            buckets=latency_buckets,
            registry=r,
        )
        self.auth_refusals = Counter(
            "lingua_auth_refusals_total",
            "Calls refused for credentials, by the role the call needed and why"
            " (missing, unknown_token, wrong_role, node_id, node_id_held)",
            ["role", "reason"],
            registry=r,
        )
        self.auth_revoked_calls = Counter(
            "lingua_auth_revoked_calls_total",
            "Open calls ended because their credential was revoked or changed by a reload",
            registry=r,
        )
        self.security = Gauge(
            "lingua_security",
            "How this instance is exposed: 1 for the mode in force (insecure=true: open outside loopback)",
            ["credentials", "tls", "insecure"],
            registry=r,
        )
        self.not_serving = Gauge(
            "lingua_not_serving",
            "1 while this reason keeps a service NOT_SERVING in health (redis_unreachable, storage_full,"
            " redis_near_full, overloaded)",
            ["reason"],
            registry=r,
        )
        self.loop_busy = Gauge(
            "lingua_event_loop_busy_ratio",
            "Share of the last overload window the event loop's thread spent on a CPU (near 1: no slack;"
            " new sessions are refused above overload_loop_busy_percent)",
            registry=r,
        )
        self.sessions_refused = Counter(
            "lingua_sessions_refused_total",
            "Sessions refused at start for a limit (instance, credential, overload)",
            ["reason"],
            registry=r,
        )

        self.handoff_seconds = Histogram(
            "lingua_handoff_seconds",
            "Time a message spent going between instances through Redis (to_holder: an attempt from its"
            " session's instance to the node's; to_owner: the node's answer back), by the senders' wall clocks",
            ["direction"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0),
            registry=r,
        )
        self.handoffs = Counter(
            "lingua_handoffs_total",
            "Messages handed to other instances, by kind (assign, cancel, event, lost) and outcome"
            " (delivered, gone: the instance's lease lapsed, full: its inbox is at its bound)",
            ["kind", "outcome"],
            registry=r,
        )
        self.inbox_depth = Gauge(
            "lingua_inbox_depth",
            "Messages waiting in this instance's inbox (read but not yet applied included)",
            registry=r,
        )
        self.relayed_attempts = Gauge(
            "lingua_relayed_attempts",
            "Attempts running on this instance's node streams for sessions of other instances",
            registry=r,
        )
        self.recovered = Counter(
            "lingua_recovered_total",
            "What this instance took over from dead instances: instances, results_recorded, jobs_ended,"
            " handoffs_returned, slots_released",
            ["what"],
            registry=r,
        )
        self.slots_reconciled = Counter(
            "lingua_slots_reconciled_total",
            "Node slots freed because nothing ran their attempt any more (a node's registration listed"
            " fewer attempts than its slot set held, or a dead instance's attempt was ended)",
            registry=r,
        )

    def serve(self, host: str, port: int) -> int:
        """Starts the HTTP endpoint in a daemon thread; returns the port it listens on."""
        self._server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return int(self._server.server_port)

    def stop_serving(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
