"""Redis clients and start-up connection with backoff."""

from __future__ import annotations

import logging
from typing import cast

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from tenacity import AsyncRetrying, retry_if_exception_type, wait_exponential_jitter

log = logging.getLogger(__name__)

# Errors worth waiting out: the server is not there yet, restarting, or slow.
TRANSIENT_REDIS_ERRORS = (RedisConnectionError, RedisTimeoutError, ConnectionError, TimeoutError, OSError)
# Backoff between the retries of a command whose connection dropped (jittered, from 50 ms, at most 1 s).
_RETRY_BACKOFF = ExponentialWithJitterBackoff(cap=1.0, base=0.05)


def _retry(retries: int) -> Retry:
    """A command whose connection dropped (a Redis restart leaves every pooled connection dead; a failover
    moves the server) is sent again on a new connection, `retries` times. A timeout is not retried: a
    stalled Redis would hold each caller several socket timeouts. Every script is safe to run twice (fenced
    or a no-op), which a reply lost with its connection needs.

    redis-py's asyncio Retry: the synchronous `redis.retry.Retry` is accepted, but its `call_with_retry`
    returns the coroutine unawaited, so nothing was ever retried."""
    return Retry(_RETRY_BACKOFF, retries, supported_errors=(RedisConnectionError,))


def redis_client(url: str, socket_timeout_s: float, max_connections: int = 64, retries: int = 3) -> Redis:
    """A binary-safe client (audio is bytes) on a bounded pool: under a burst, a call waits for a free
    connection (up to the socket timeout) instead of failing, and a failed command is retried a few times."""
    pool = BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=socket_timeout_s,
        decode_responses=False,
        socket_timeout=socket_timeout_s,
        socket_connect_timeout=socket_timeout_s,
        health_check_interval=30,
        retry=_retry(retries),
    )
    return Redis(connection_pool=pool)


def redis_cluster_client(
    url: str, socket_timeout_s: float, max_connections: int = 64, retries: int = 3
) -> Redis:
    """A Redis Cluster client seeded by `url` (one node; it discovers the others). Typed as `Redis`: it
    takes the same commands, scripts and pipelines, and every script and transaction here touches one hash
    slot (see keys.py), which is what the cluster asks."""
    cluster = RedisCluster.from_url(
        url,
        decode_responses=False,
        socket_timeout=socket_timeout_s,
        socket_connect_timeout=socket_timeout_s,
        max_connections=max_connections,
        retry=_retry(retries),
    )
    return cast(Redis, cluster)


async def connect_redis(
    url: str,
    socket_timeout_s: float,
    backoff_max_s: float,
    max_connections: int = 64,
    cluster: bool = False,
    retries: int = 3,
) -> Redis:
    """Connects and PINGs, waiting with capped exponential backoff for as long as Redis is unreachable.
    `cluster`: `url` is a seed node of a Redis Cluster."""
    client = (
        redis_cluster_client(url, socket_timeout_s, max_connections, retries)
        if cluster
        else redis_client(url, socket_timeout_s, max_connections, retries)
    )
    async for attempt in AsyncRetrying(
        retry=retry_if_exception_type(TRANSIENT_REDIS_ERRORS),
        wait=wait_exponential_jitter(multiplier=0.1, max=backoff_max_s),
        before_sleep=lambda state: log.warning(
            "redis unreachable, retrying",
            extra={
                "redis_url": _redacted(url),
                "attempt": state.attempt_number,
                "error": repr(state.outcome.exception()) if state.outcome else "",
            },
        ),
        reraise=True,
    ):
        with attempt:
            await client.ping()
    return client


def _redacted(url: str) -> str:
    """The URL without its password, for logs."""
    if "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    return f"{scheme}://***@{rest.split('@', 1)[1]}"


def text(value: bytes | str) -> str:
    """A Redis reply (bytes without decode_responses) as text."""
    return value.decode() if isinstance(value, bytes) else value
