"""NodeService: a thin loop over each node's stream, dispatching on the oneof to the NodeHub."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import grpc

from lingua_grpc._grpc import read_first, read_message
from lingua_grpc.api import _convert as convert
from lingua_grpc.api._errors import domain_errors
from lingua_grpc.errors import FailedPrecondition, Unauthenticated, status_for
from lingua_grpc.nodes import CloseReason, LinkClosed, NodeHub, NodeLink
from lingua_grpc.pb import node_pb2, node_pb2_grpc
from lingua_grpc.registry import RegistrationLimits
from lingua_grpc.security import AccessGate, current_principal, on_revoke
from lingua_grpc.tasks import StopBetweenSteps

log = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext[node_pb2.ConnectRequest, node_pb2.ConnectResponse]


class NodeServicer(node_pb2_grpc.NodeServiceServicer):
    def __init__(
        self,
        hub: NodeHub,
        gate: AccessGate,
        heartbeat_interval_ms: int,
        lease_ms: int,
        instance_id: str,
        limits: RegistrationLimits | None = None,
    ) -> None:
        self._hub = hub
        self._limits = limits or RegistrationLimits()
        self._gate = gate
        self._heartbeat_interval_ms = heartbeat_interval_ms
        self._lease_ms = lease_ms
        self._instance_id = instance_id

    async def Connect(self, request_iterator: object, context: Context) -> None:  # type: ignore[override]
        first: node_pb2.ConnectRequest = await read_first(context, "register", "NodeService.Connect")
        principal = current_principal()
        async with domain_errors(context):
            if not principal.may_register(first.register.node_id):
                raise self._gate.refuse_node_id(principal, first.register.node_id)
            caps = first.register.capabilities
            self._limits.check_counts(  # before the conversion, which costs per entry
                pairs=len(caps.translation_pairs),
                asr_languages=len(caps.asr_languages),
                tts_languages=len(caps.tts_languages),
                labels=len(caps.labels),
                gpus=len(caps.gpus),
                running=len(first.register.running_jobs),
            )
            attached = await self._hub.attach(
                convert.registration_from_proto(first.register), holder=principal.name
            )
        link = attached.link
        on_revoke(lambda: link.close(CloseReason.REVOKED, Unauthenticated("credential revoked")))
        steps = StopBetweenSteps()
        reader = asyncio.create_task(self._read(context, link, steps), name=f"node-reader-{link.node_id}")
        try:
            await context.write(
                node_pb2.ConnectResponse(
                    registered=node_pb2.Registered(
                        node_id=link.node_id,
                        heartbeat_interval_ms=self._heartbeat_interval_ms,
                        lease_ms=self._lease_ms,
                        scheduler_instance_id=self._instance_id,
                        registry_version=attached.registry_version,
                    )
                )
            )
            while True:
                outgoing = await link.next_outgoing()
                message = convert.outgoing_to_proto(outgoing)
                self._hub.written(outgoing)  # handed to gRPC: the rest is the transport and the node
                await context.write(message)
        except LinkClosed as closed:
            if closed.error is not None:
                await context.abort(status_for(closed.error), str(closed.error))
            if closed.reason is CloseReason.SHUTDOWN:
                await context.abort(grpc.StatusCode.UNAVAILABLE, "the scheduler is shutting down: reconnect")
        finally:
            steps.stop()  # between messages: a result being recorded is recorded and handed on first
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            self._hub.detach(link)

    async def _read(self, context: Context, link: NodeLink, steps: StopBetweenSteps) -> None:
        steps.bind()
        try:
            while True:
                message: node_pb2.ConnectRequest | None = await read_message(context)
                if message is None:
                    link.close(CloseReason.LEFT)
                    return
                with steps:
                    if not await self._handle(link, message):
                        return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the stream broke under the reader: the node is gone
            log.info("node stream broken", extra={"node_id": link.node_id, "error": repr(exc)})
            link.close(CloseReason.STREAM_BROKEN)

    async def _handle(self, link: NodeLink, message: node_pb2.ConnectRequest) -> bool:
        """Applies one node message; False when the stream must not be read further."""
        kind = message.WhichOneof("kind")
        if kind == "heartbeat":
            await self._hub.heartbeat(link, convert.load_from_proto(message.heartbeat.load))
        elif kind == "draining":
            await self._hub.node_draining(link, message.draining.reason)
        elif kind == "register":
            link.close(CloseReason.PROTOCOL, FailedPrecondition("`register` was already sent on this stream"))
            return False
        elif (event := convert.job_event_from_proto(message)) is not None:
            await self._hub.job_event(link, event)
        else:
            log.warning("unknown node message", extra={"node_id": link.node_id, "kind": kind})
        return True
