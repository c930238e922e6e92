"""Scheduler settings: every default in one place.

Each setting is a field of `Settings` with its default, its help text and its environment variable
(`LINGUA_` + the upper-cased name). Precedence: command-line flag, then environment, then default.
`lingua-scheduler --help` and the README's settings table are produced from these fields; nothing else in
the scheduler reads the environment.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import socket
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from lingua_grpc.errors import LinguaError
from lingua_grpc.registry._model import RegistrationLimits
from lingua_grpc.security._tls import ServerTls, is_loopback
from lingua_grpc.sessions._options import SessionOptions

ENV_PREFIX = "LINGUA_"
CLIENT_RECEIVE_LIMIT = 4 * 1024 * 1024  # gRPC's default; clients in other languages keep it


def _setting(default: Any, help: str) -> Any:
    return field(default=default, metadata={"help": help})


def _parse_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"{text!r} is not a boolean (true/false)")


def _parser(default: Any) -> Callable[[str], Any]:
    return _parse_bool if isinstance(default, bool) else cast(Callable[[str], Any], type(default))


def _default_instance_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True, slots=True)
class Settings:
    """Typed, validated scheduler settings."""

    listen: str = _setting(
        "127.0.0.1:50051",
        "gRPC address to serve (HOST:PORT; port 0 picks a free one); outside loopback it needs --auth-file"
        " and --tls-cert/--tls-key, or --insecure",
    )
    workers: int = _setting(
        1,
        "scheduler processes serving --listen together (SO_REUSEPORT), each an instance of the fleet"
        " named <instance-id>-w<N>; with no --redis-url they share one embedded redis-server",
    )
    reuse_port: bool = _setting(
        False,
        "let other processes listen on the same port (SO_REUSEPORT); --workers sets it for its processes."
        " Off, a port already in use is an error at start",
    )
    auth_file: str = _setting(
        "", "TOML file of credentials (token SHA-256s, roles, node ids); empty: no credentials asked"
    )
    tls_cert: str = _setting("", "PEM certificate (chain) the gRPC listener serves TLS with")
    tls_key: str = _setting("", "PEM private key of --tls-cert")
    tls_client_ca: str = _setting("", "PEM CA bundle: callers must present a certificate it signed (mTLS)")
    insecure: bool = _setting(
        False, "serve outside loopback without credentials or TLS (warned at start and in metrics)"
    )
    refusal_read_ms: int = _setting(
        500,
        "a streaming call refused for its credentials first reads the caller's first message, waiting at most"
        " this long, so that a client whose first write is in flight gets the refusal's status (grpcio may"
        " report INTERNAL instead, grpc/grpc#36066); 0: refuse at once",
    )
    redis_url: str = _setting(
        "", "Redis to use (redis://HOST:PORT/DB); empty starts a private embedded redis-server"
    )
    redis_cluster: bool = _setting(
        False,
        "--redis-url is a seed node of a Redis Cluster (every script and transaction stays in one slot)",
    )
    key_prefix: str = _setting("lingua:v1:", "prefix of every Redis key")
    instance_id: str = _setting("", "id of this scheduler instance in Redis; empty derives host-pid-random")
    metrics_host: str = _setting("127.0.0.1", "address the Prometheus metrics endpoint binds")
    metrics_port: int = _setting(9464, "port of the Prometheus metrics endpoint; 0 picks a free one, -1 off")
    advertise_address: str = _setting(
        "",
        "address this instance gives the fleet for clients and nodes (HOST:PORT); empty: the listen address",
    )
    instance_heartbeat_ms: int = _setting(2000, "how often this instance renews its record in Redis")
    instance_lease_ms: int = _setting(
        10000, "an instance whose record is not renewed this long is dead to the fleet"
    )
    fleet_inbox_max_entries: int = _setting(
        100000, "most hand-offs an instance's inbox holds; past it, others place work elsewhere"
    )
    fleet_inbox_read_count: int = _setting(256, "most hand-offs an instance reads from its inbox at once")
    fleet_inbox_block_ms: int = _setting(
        1000, "how long one read of the inbox waits for a hand-off (it returns at once when one comes)"
    )
    heartbeat_interval_ms: int = _setting(5000, "how often nodes send heartbeats")
    node_lease_heartbeats: int = _setting(3, "missed heartbeats after which a node is dropped")
    lease_check_interval_ms: int = _setting(1000, "how often expired node leases are looked for in Redis")
    node_reconnect_grace_ms: int = _setting(
        1000,
        "how long the attempts of a node whose stream broke wait for it to register again on this instance"
        " (it lists what it runs, which then runs on) before they run elsewhere; 0: at once",
    )
    snapshot_poll_ms: int = _setting(100, "how often the registry version is read to spot changes")
    snapshot_refresh_ms: int = _setting(
        1000, "longest a registry snapshot goes without a full re-read (to pick up node loads)"
    )
    loop_lag_interval_ms: int = _setting(
        100, "how often the event loop's lag is sampled (lingua_event_loop_lag_seconds)"
    )
    max_node_concurrency: int = _setting(1024, "largest max_concurrency a node may register with")
    node_max_pairs: int = _setting(1024, "most translation pairs one node may register")
    node_max_languages: int = _setting(256, "most ASR (and, apart, TTS) languages one node may register")
    node_max_labels: int = _setting(32, "most labels one node may register")
    node_max_gpus: int = _setting(64, "most GPUs one node may register")
    node_max_result_text_bytes: int = _setting(
        65536, "longest transcript or translation a node may return; longer fails the attempt"
    )
    node_max_result_tts_bytes: int = _setting(
        3145728, "largest TTS audio a node may return; larger fails the attempt"
    )
    node_max_field_bytes: int = _setting(
        256, "longest label key or value, agent version, GPU name or uuid in a registration (bytes)"
    )
    pools_file: str = _setting("", "TOML file of configured pools that replace derived ones for their pairs")
    redis_backoff_max_ms: int = _setting(5000, "longest wait between Redis connection attempts")
    redis_socket_timeout_ms: int = _setting(
        5000,
        "timeout of one Redis command (and of waiting for a connection); a timed-out command is not retried",
    )
    redis_command_retries: int = _setting(
        3,
        "times a Redis command whose connection dropped (a restart, a failover) is sent again on a new one,"
        " 50 ms to 1 s apart (jittered)",
    )
    redis_max_connections: int = _setting(64, "Redis connections per scheduler; more callers wait for one")
    redis_memory_poll_ms: int = _setting(
        1000, "how often Redis' memory is read (lingua_redis_used_memory_bytes; one INFO, off the jobs' path)"
    )
    redis_near_full_percent: int = _setting(
        90,
        "share of Redis' maxmemory in use at which SessionService health goes NOT_SERVING (redis_near_full;"
        " lifted 5 points below); 0: off",
    )
    redis_server_path: str = _setting("redis-server", "redis-server binary for the embedded Redis")
    embedded_redis_maxmemory_mb: int = _setting(
        512, "memory limit of the embedded Redis (noeviction: when full, new utterances are skipped)"
    )
    session_pause_ms: int = _setting(600, "default pause that ends an utterance (client may set 100-10000)")
    session_hangover_ms: int = _setting(
        200, "default grace after a pause in which speech continues the utterance"
    )
    session_max_utterance_ms: int = _setting(15000, "default longest utterance before it is cut")
    session_gap_timeout_ms: int = _setting(
        10000, "default wait for a missing result that holds back later ones"
    )
    session_tts_enabled: bool = _setting(
        True, "whether results carry synthesized speech unless the client says"
    )
    session_silence_threshold_dbfs: int = _setting(-45, "default level below which audio counts as silence")
    session_queue_timeout_ms: int = _setting(
        5000, "default wait for a free node slot before an utterance is skipped"
    )
    session_inbox_chunks: int = _setting(
        64, "audio chunks a session buffers before the client is slowed down"
    )
    session_max_outstanding: int = _setting(
        32,
        "utterances of one session waiting or running at once (SessionStarted.max_outstanding_utterances);"
        " beyond, a session that waits for room is not read until one ends, another's are skipped"
        " (SESSION_BACKLOG)",
    )
    session_idle_timeout_ms: int = _setting(
        120000,
        "a session that sends nothing this long (to within a tenth) before end_of_stream ends (DEADLINE_EXCEEDED)",
    )
    session_outbox_max_bytes: int = _setting(
        16777216,
        "unread output one session may hold; a client that stops reading is ended (RESOURCE_EXHAUSTED)",
    )
    max_sessions: int = _setting(
        5000, "open sessions on this instance; more are refused (RESOURCE_EXHAUSTED)"
    )
    overload_loop_lag_ms: int = _setting(
        50,
        "event-loop lag over which, for half of overload_window_ms, new sessions are refused"
        " (RESOURCE_EXHAUSTED with retry-after-ms; SessionService health NOT_SERVING); 0: off",
    )
    overload_queue_wait_ms: int = _setting(
        500,
        "a pair whose oldest job has waited this long for a node slot refuses new sessions"
        " (RESOURCE_EXHAUSTED with retry-after-ms) until its nodes catch up; 0: off",
    )
    overload_loop_busy_percent: int = _setting(
        85,
        "share of time the event loop's thread runs or waits for a CPU over which, for half of"
        " overload_window_ms, new sessions are refused as for overload_loop_lag_ms; 0: off",
    )
    overload_window_ms: int = _setting(
        1000, "window of the overload figures, the least time overload lasts once entered, and the retry hint"
    )
    pair_queue_max_jobs: int = _setting(
        1000, "jobs waiting for a slot per language pair; more are skipped at once (NO_CAPACITY)"
    )
    max_chunk_bytes: int = _setting(262144, "largest audio chunk accepted (bytes)")
    max_message_bytes: int = _setting(8388608, "largest gRPC message accepted or sent (bytes)")
    accept_timeout_ms: int = _setting(
        2000,
        "how long after its assignment an attempt of a dead instance, still ASSIGNED, is taken as never having"
        " reached its node (a survivor places it again). A live node is never timed out for being slow to"
        " accept: its attempts run again only when it is lost (stream, lease) or past the job deadline",
    )
    job_deadline_ms: int = _setting(
        30000,
        "time a node has for one job attempt, plus job_deadline_audio_factor x the utterance's length, counted"
        " from its assignment and again from its acceptance; past it the attempt runs elsewhere",
    )
    job_deadline_audio_factor: int = _setting(
        2, "seconds of job deadline added per second of the utterance's audio (see job_deadline_ms)"
    )
    job_max_attempts: int = _setting(
        3,
        "attempts that reached a node per job before its utterance is skipped as FAILED (an attempt that never"
        " reached one, its node already gone or its hand-off impossible, does not count)",
    )
    retry_budget_tokens: int = _setting(
        100,
        "retry budget of this instance (gRPC retry throttling): a token bucket of this size that each attempt"
        " failed by a live node (rejected, failed, past its deadline) drains by one and each result refills by"
        " retry_budget_refill_percent / 100; below half full, such jobs are not run again (FAILED), so a node"
        " that fails everything costs a bounded share of capacity. Attempts of lost nodes do not drain it",
    )
    retry_budget_refill_percent: int = _setting(
        10, "tokens a result gives back to the retry budget, in hundredths (see retry_budget_tokens)"
    )
    store_wait_ms: int = _setting(
        30000,
        "how long an utterance whose job Redis cannot record yet (an outage, a restart) waits, its audio held,"
        " for Redis to answer; past it the utterance is skipped STORE_UNAVAILABLE",
    )
    store_wait_max_bytes: int = _setting(
        67108864,
        "audio this instance holds for utterances waiting for Redis (see store_wait_ms); more are skipped"
        " STORE_UNAVAILABLE at once",
    )
    job_ttl_ms: int = _setting(3600000, "how long a job's record stays in Redis")
    job_audio_ttl_ms: int = _setting(
        600000,
        "longest a job's audio stays in Redis for re-dispatch or a resume; it is deleted once the job is final",
    )
    result_audio_ttl_ms: int = _setting(
        30000,
        "how long a result's synthesized speech stays in Redis for a client that resumes its session (Redis"
        " memory: results per second x TTS bytes x this)",
    )
    session_resume_ttl_ms: int = _setting(
        300000,
        "how long a resume token stays valid after it was issued (sessions send fresh ones as they go on)",
    )
    session_resume_max_answers: int = _setting(
        1000,
        "most answers a resume sends again from the store (a client's next_utterance_index may be that far"
        " from the session's; further is refused INVALID_ARGUMENT), and most jobs GetSession lists",
    )
    resume_key_file: str = _setting(
        "",
        "file holding the fleet's key (at least 16 bytes) that signs resume tokens; every instance needs the"
        " same. Empty: a random key kept in Redis, made by the first instance",
    )
    queue_retry_ms: int = _setting(100, "how often queued jobs retry when no slot was announced free")
    slot_release_retry_ms: int = _setting(
        60000,
        "how long freeing a node slot is retried while Redis is unreachable (a held slot is lost capacity)",
    )
    shutdown_grace_ms: int = _setting(5000, "time in-flight work gets to finish on SIGTERM")
    log_level: str = _setting("INFO", "DEBUG, INFO, WARNING or ERROR")
    log_format: str = _setting("json", "json (one object per line) or text")

    @property
    def node_lease_ms(self) -> int:
        return self.heartbeat_interval_ms * self.node_lease_heartbeats

    @property
    def server_tls(self) -> ServerTls | None:
        return ServerTls(self.tls_cert, self.tls_key, self.tls_client_ca) if self.tls_cert else None

    @property
    def registration_limits(self) -> RegistrationLimits:
        return RegistrationLimits(
            max_concurrency=self.max_node_concurrency,
            max_pairs=self.node_max_pairs,
            max_languages=self.node_max_languages,
            max_labels=self.node_max_labels,
            max_gpus=self.node_max_gpus,
            max_field_bytes=self.node_max_field_bytes,
        )

    @property
    def session_defaults(self) -> SessionOptions:
        return SessionOptions(
            pause_ms=self.session_pause_ms,
            hangover_ms=self.session_hangover_ms,
            max_utterance_ms=self.session_max_utterance_ms,
            gap_timeout_ms=self.session_gap_timeout_ms,
            tts_enabled=self.session_tts_enabled,
            silence_threshold_dbfs=self.session_silence_threshold_dbfs,
            queue_timeout_ms=self.session_queue_timeout_ms,
        )

    @property
    def embedded_redis(self) -> bool:
        return not self.redis_url

    def __post_init__(self) -> None:
        if not self.instance_id:
            object.__setattr__(self, "instance_id", _default_instance_id())
        problems = list(self._problems())
        if problems:
            raise ValueError("invalid settings: " + "; ".join(problems))

    def _problems(self) -> Sequence[str]:
        out: list[str] = []
        host, sep, port = self.listen.rpartition(":")
        if not sep or not host or not port.isdigit():
            out.append(f"listen must be HOST:PORT, got {self.listen!r}")
        elif not is_loopback(host) and not self.insecure and not (self.auth_file and self.tls_cert):
            missing = [
                what
                for what, have in (("--auth-file", self.auth_file), ("--tls-cert/--tls-key", self.tls_cert))
                if not have
            ]
            out.append(
                f"listen {self.listen} is reachable from other machines: pass {' and '.join(missing)}"
                " (credentials and TLS), or --insecure to serve it open (not for production)"
            )
        if bool(self.tls_cert) != bool(self.tls_key):
            out.append("tls_cert and tls_key go together (the listener's certificate and its key)")
        if self.tls_client_ca and not self.tls_cert:
            out.append("tls_client_ca needs tls_cert/tls_key: client certificates are checked over TLS")
        if self.redis_cluster and not self.redis_url:
            out.append(
                "redis_cluster needs redis_url: a seed node of the cluster (the embedded Redis is one server)"
            )
        if self.redis_url and not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            out.append(f"redis_url must start with redis://, rediss:// or unix://, got {self.redis_url!r}")
        if any(c in self.instance_id for c in "{} "):
            out.append("instance_id must have no spaces or braces (it goes inside a Redis hash tag)")
        if not self.key_prefix or any(c in self.key_prefix for c in "{} "):
            out.append("key_prefix must be non-empty without spaces or braces (braces are hash tags)")
        for name in (
            "heartbeat_interval_ms",
            "lease_check_interval_ms",
            "snapshot_poll_ms",
            "snapshot_refresh_ms",
        ):
            if getattr(self, name) < 10:
                out.append(f"{name} must be at least 10")
        for name in (
            "overload_loop_lag_ms",
            "overload_queue_wait_ms",
            "refusal_read_ms",
            "job_deadline_audio_factor",
            "retry_budget_refill_percent",
            "node_reconnect_grace_ms",
        ):
            if getattr(self, name) < 0:
                out.append(f"{name} must be 0 (off) or more")
        if not 0 <= self.overload_loop_busy_percent <= 100:
            out.append("overload_loop_busy_percent must be 0 (off) to 100")
        if not 0 <= self.redis_near_full_percent <= 100:
            out.append("redis_near_full_percent must be 0 (off) to 100")
        if self.instance_lease_ms < 2 * self.instance_heartbeat_ms:
            out.append(
                "instance_lease_ms must be at least 2 x instance_heartbeat_ms (one late renewal is not death)"
            )
        if self.node_lease_heartbeats < 2:
            out.append("node_lease_heartbeats must be at least 2 (one late heartbeat must not drop a node)")
        try:
            self.session_defaults.check_defaults()
        except LinguaError as exc:
            out.append(f"session defaults: {exc}")
        for name in (
            "session_inbox_chunks",
            "session_max_outstanding",
            "session_idle_timeout_ms",
            "session_outbox_max_bytes",
            "max_sessions",
            "overload_window_ms",
            "embedded_redis_maxmemory_mb",
            "pair_queue_max_jobs",
            "redis_max_connections",
            "redis_memory_poll_ms",
            "max_chunk_bytes",
            "accept_timeout_ms",
            "job_deadline_ms",
            "job_max_attempts",
            "retry_budget_tokens",
            "store_wait_ms",
            "store_wait_max_bytes",
            "result_audio_ttl_ms",
            "session_resume_ttl_ms",
            "session_resume_max_answers",
            "queue_retry_ms",
            "slot_release_retry_ms",
            "loop_lag_interval_ms",
            "instance_heartbeat_ms",
            "workers",
            "fleet_inbox_max_entries",
            "fleet_inbox_read_count",
            "fleet_inbox_block_ms",
            "max_node_concurrency",
            "node_max_pairs",
            "node_max_languages",
            "node_max_labels",
            "node_max_gpus",
            "node_max_field_bytes",
            "node_max_result_text_bytes",
            "node_max_result_tts_bytes",
        ):
            if getattr(self, name) < 1:
                out.append(f"{name} must be at least 1")
        result_bytes = 2 * self.node_max_result_text_bytes + self.node_max_result_tts_bytes + 65536
        if result_bytes > CLIENT_RECEIVE_LIMIT:
            out.append(
                "2 x node_max_result_text_bytes + node_max_result_tts_bytes must leave a result under gRPC's"
                f" default 4 MiB receive limit (with 64 KiB for the rest), got {result_bytes} bytes"
            )
        if not -1 <= self.metrics_port <= 65535:
            out.append("metrics_port must be -1 (off), 0 (any) or a port")
        if self.log_level.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            out.append(f"log_level must be DEBUG, INFO, WARNING or ERROR, got {self.log_level!r}")
        if self.log_format not in {"json", "text"}:
            out.append(f"log_format must be json or text, got {self.log_format!r}")
        return out

    @classmethod
    def env_name(cls, name: str) -> str:
        return ENV_PREFIX + name.upper()

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Adds one flag per setting; a flag left out falls back to the environment, then the default."""
        for f in dataclasses.fields(cls):
            flag = isinstance(f.default, bool)  # `--insecure` alone means true; `--insecure false` too
            parser.add_argument(
                "--" + f.name.replace("_", "-"),
                dest=f.name,
                type=_parser(f.default),
                default=None,
                nargs="?" if flag else None,
                const=True if flag else None,
                metavar="BOOL" if flag else f.name.upper(),
                help=f"{f.metadata['help']} (env {cls.env_name(f.name)}, default {f.default!r})",
            )

    @classmethod
    def from_sources(
        cls, args: argparse.Namespace | None = None, environ: Mapping[str, str] | None = None
    ) -> Settings:
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            flag = getattr(args, f.name, None) if args is not None else None
            if flag is not None:
                values[f.name] = flag
            elif (raw := environ.get(cls.env_name(f.name))) is not None:
                try:
                    values[f.name] = _parser(f.default)(raw)
                except ValueError as exc:
                    raise ValueError(f"{cls.env_name(f.name)}={raw!r}: {exc}") from None
        return cls(**values)

    def with_overrides(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    @classmethod
    def markdown_table(cls) -> str:
        rows = ["| flag | environment | default | meaning |", "|---|---|---|---|"]
        for f in dataclasses.fields(cls):
            flag = "--" + f.name.replace("_", "-")
            rows.append(f"| `{flag}` | `{cls.env_name(f.name)}` | `{f.default!r}` | {f.metadata['help']} |")
        return "\n".join(rows)
