"""The one place that decides who may call what: a server interceptor in front of every service.

Each service needs one role (SessionService: client, NodeService: node, RegistryService: operator); health
and reflection stay open. The interceptor wraps the service's handler so that, inside the call's own task,
it checks the `authorization: Bearer <token>` metadata, makes the caller's `Principal` available to the
servicer (`current_principal()`, never the token), and keeps the call on a list so that a credential
revoked by a reload (SIGHUP) ends its open streams with UNAUTHENTICATED.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import grpc

from lingua_grpc.errors import LinguaError, PermissionDenied, Unauthenticated, status_for
from lingua_grpc.metrics import SchedulerMetrics
from lingua_grpc.security._bounds import MessageBounds, MessageTooLarge, unparsed
from lingua_grpc.security._credentials import ANONYMOUS, CredentialBook, Principal, Role

log = logging.getLogger(__name__)

_PRINCIPAL: contextvars.ContextVar[Principal] = contextvars.ContextVar("lingua_principal", default=ANONYMOUS)

ROLE_BY_SERVICE = {
    "lingua.v1.SessionService": Role.CLIENT,
    "lingua.v1.NodeService": Role.NODE,
    "lingua.v1.RegistryService": Role.OPERATOR,
}


def current_principal() -> Principal:
    """The caller of the RPC running in this task (ANONYMOUS when credentials are off)."""
    return _PRINCIPAL.get()


@dataclass(eq=False)
class _OpenCall:
    principal: Principal
    task: asyncio.Task[Any] | None
    revoked: bool = False
    # How the servicer ends this call in order when its credential is revoked. Without one the handler's
    # task is cancelled, which is safe only for calls that never hold a write in flight for long.
    closer: Callable[[], None] | None = None


_CALL: contextvars.ContextVar[_OpenCall | None] = contextvars.ContextVar("lingua_call", default=None)


def on_revoke(closer: Callable[[], None]) -> None:
    """The running call ends itself with `closer` (in order, after its writes) if its credential is revoked.
    `closer` must end the call with UNAUTHENTICATED "credential revoked"."""
    call = _CALL.get()
    if call is not None:
        call.closer = closer


@dataclass
class AccessGate:
    """Checks callers against the credentials in force (None: credentials off, everyone is ANONYMOUS)."""

    book: CredentialBook | None
    metrics: SchedulerMetrics
    # A refused streaming call reads the caller's first message (waiting at most this long) before its
    # status goes out: a status that overtakes the client's first write reaches grpcio's asyncio client as
    # INTERNAL "Internal error from Core" instead of the refusal (grpc/grpc#36066).
    refusal_read_s: float = 0.0
    _calls: set[_OpenCall] = field(default_factory=set)

    def admit(self, metadata: Iterable[tuple[str, str | bytes]] | None, role: Role, method: str) -> Principal:
        if self.book is None:
            return ANONYMOUS
        token = _bearer(metadata)
        if token is None:
            self._refused(role, "missing", None, method)
            raise Unauthenticated(
                "this scheduler requires credentials: send metadata `authorization: Bearer <token>`"
            )
        principal = self.book.authenticate(token)
        if principal is None:
            self._refused(role, "unknown_token", None, method)
            raise Unauthenticated("unknown token")
        if not principal.may_act_as(role):
            self._refused(role, "wrong_role", principal, method)
            raise PermissionDenied(
                f"credential {principal.name!r} has role {principal.role.value if principal.role else '?'};"
                f" {method} needs role {role.value}"
            )
        return principal

    def refuse_node_id(self, principal: Principal, node_id: str) -> PermissionDenied:
        self._refused(Role.NODE, "node_id", principal, "NodeService.Connect")
        return PermissionDenied(f"credential {principal.name!r} may not register node id {node_id[:140]!r}")

    def reload(self, book: CredentialBook) -> int:
        """Puts new credentials in force; open calls of credentials that are gone or changed are ended.
        Returns how many were ended."""
        if self.book is None:
            raise ValueError("credentials are off (no --auth-file): nothing to reload")
        self.book = book
        granted = book.principals
        ended = 0
        for call in list(self._calls):
            if granted.get(call.principal.name) != call.principal and not call.revoked:
                call.revoked = True
                ended += 1
                if call.closer is not None:
                    call.closer()
                elif call.task is not None:
                    call.task.cancel()
        if ended:
            self.metrics.auth_revoked_calls.inc(ended)
        log.info("credentials reloaded", extra={"credentials": len(book), "calls_ended": ended})
        return ended

    @contextlib.asynccontextmanager
    async def calling(
        self, context: grpc.aio.ServicerContext[Any, Any], role: Role, method: str, streaming: bool = False
    ) -> AsyncIterator[None]:
        """Runs the call as its caller's principal; refuses it (UNAUTHENTICATED, PERMISSION_DENIED)
        otherwise. `streaming`: the caller streams requests (its first one is read before a refusal)."""
        try:
            principal = self.admit(context.invocation_metadata(), role, method)
        except LinguaError as exc:
            if streaming and self.refusal_read_s > 0:
                # Whatever it sent, or nothing: the refusal follows. Received, never parsed: a refused
                # caller costs the process its bytes' arrival only (issue 19).
                with unparsed(), contextlib.suppress(Exception):
                    await asyncio.wait_for(context.read(), self.refusal_read_s)
            await context.abort(status_for(exc), str(exc))
        call = _OpenCall(principal, asyncio.current_task())
        self._calls.add(call)
        token = _PRINCIPAL.set(principal)
        call_token = _CALL.set(call)
        try:
            yield
        except MessageTooLarge as exc:  # from the servicer's own read of a message
            log.warning("message refused unparsed", extra={"method": method, "error": str(exc)})
            await context.abort(status_for(exc), str(exc))
        except asyncio.CancelledError:
            if not call.revoked:
                raise
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            # Set, not `abort`: the cancellation may have cut a write that gRPC still holds, and a status
            # batch started beside it fails (GRPC_CALL_ERROR_TOO_MANY_OPERATIONS). gRPC sends this status
            # once the handler returns and that write is done.
            context.set_code(grpc.StatusCode.UNAUTHENTICATED)
            context.set_details("credential revoked")
        finally:
            _CALL.reset(call_token)
            _PRINCIPAL.reset(token)
            self._calls.discard(call)

    def _refused(self, role: Role, reason: str, principal: Principal | None, method: str) -> None:
        self.metrics.auth_refusals.labels(role.value, reason).inc()
        log.warning(
            "call refused",
            extra={
                "role": role.value,
                "reason": reason,
                "credential": principal.name if principal else None,
                "method": method,
            },
        )


def _bearer(metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
    for key, value in metadata or ():
        if key.lower() == "authorization":
            text = value.decode(errors="replace") if isinstance(value, bytes) else value
            scheme, _, token = text.strip().partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


if TYPE_CHECKING:
    Handler = grpc.RpcMethodHandler[Any, Any]
    _Interceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    Handler = grpc.RpcMethodHandler
    _Interceptor = grpc.aio.ServerInterceptor


class AuthInterceptor(_Interceptor):
    """Runs each call of a service with a role inside `gate.calling`, its requests behind `bounds`."""

    def __init__(self, gate: AccessGate, bounds: MessageBounds | None = None) -> None:
        self._gate = gate
        self._bounds = bounds

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler = await continuation(details)
        method = str(details.method).lstrip("/")
        role = ROLE_BY_SERVICE.get(method.partition("/")[0])
        if handler is None or role is None:
            return handler  # health, reflection, and unknown methods (UNIMPLEMENTED) stay open
        return _guarded(handler, self._gate, role, method, self._bounds)


def _guarded(
    handler: Any, gate: AccessGate, role: Role, method: str, bounds: MessageBounds | None
) -> Handler:
    """The same handler, its behaviour run inside `gate.calling` and its requests behind `bounds`."""
    kind = (
        "stream_stream"
        if handler.request_streaming and handler.response_streaming
        else "stream_unary"
        if handler.request_streaming
        else "unary_stream"
        if handler.response_streaming
        else "unary_unary"
    )
    inner = getattr(handler, kind)
    behaviour: Any
    if inspect.isasyncgenfunction(inner):

        async def behaviour(request: Any, context: Any) -> AsyncIterator[Any]:
            async with gate.calling(context, role, method, handler.request_streaming):
                async for response in inner(request, context):
                    yield response

    else:

        async def behaviour(request: Any, context: Any) -> Any:
            async with gate.calling(context, role, method, handler.request_streaming):
                return await inner(request, context)

    make: Any = getattr(grpc, f"{kind}_rpc_method_handler")
    guarded: Handler = make(
        behaviour,
        request_deserializer=(
            bounds.deserializer(method, handler.request_deserializer)
            if bounds is not None
            else handler.request_deserializer
        ),
        response_serializer=handler.response_serializer,
    )
    return guarded
