"""Domain errors and the one table that maps them to gRPC status codes."""

from __future__ import annotations

import grpc


class LinguaError(Exception):
    """Base class of every error the scheduler reports to a caller.

    `retry_after_ms`, when set, travels to the caller as the trailing metadata `retry-after-ms`: how long to
    wait before trying again (a refusal for load, not for the request itself).
    """

    def __init__(self, message: str, *, retry_after_ms: int | None = None) -> None:
        super().__init__(message)
        self.retry_after_ms = retry_after_ms


class InvalidArgument(LinguaError):
    """The request is malformed or out of range; the message says what to fix."""


class FailedPrecondition(LinguaError):
    """The request is well-formed but comes in the wrong order or state."""


class NotFound(LinguaError):
    """The named node, pool or job does not exist."""


class Unavailable(LinguaError):
    """The scheduler cannot serve this right now (no node for the pair, Redis down, shutting down)."""


class ResourceExhausted(LinguaError):
    """A limit was exceeded."""


class Unauthenticated(LinguaError):
    """No credential, or one the scheduler does not know."""


class PermissionDenied(LinguaError):
    """A known credential asked for something its role or node ids do not grant."""


class Aborted(LinguaError):
    """The call lost a race it cannot win by retrying as is (its session was resumed on another stream)."""


class IdleTimeout(LinguaError):
    """A session sent nothing for longer than its idle timeout."""


class LeaseExpired(LinguaError):
    """A node went a whole lease without a heartbeat."""


STATUS_BY_ERROR: dict[type[LinguaError], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    NotFound: grpc.StatusCode.NOT_FOUND,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    Aborted: grpc.StatusCode.ABORTED,
    IdleTimeout: grpc.StatusCode.DEADLINE_EXCEEDED,
    LeaseExpired: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def status_for(error: LinguaError) -> grpc.StatusCode:
    for cls in type(error).__mro__:
        if cls in STATUS_BY_ERROR:
            return STATUS_BY_ERROR[cls]
    return grpc.StatusCode.INTERNAL
