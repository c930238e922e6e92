"""RegistryService: snapshots, nodes, pools and drain for operators."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable

import grpc

from lingua_grpc.api import _convert as convert
from lingua_grpc.api._errors import domain_errors
from lingua_grpc.errors import InvalidArgument, NotFound
from lingua_grpc.fleet import InstanceRegistry
from lingua_grpc.jobs import JobStore, parse_job_id
from lingua_grpc.nodes import NodeHub
from lingua_grpc.pb import registry_pb2, registry_pb2_grpc
from lingua_grpc.registry import NodeRecord, SnapshotCache
from lingua_grpc.sessions import SessionStore

Context = grpc.aio.ServicerContext[object, object]


class RegistryServicer(registry_pb2_grpc.RegistryServiceServicer):
    def __init__(
        self,
        cache: SnapshotCache,
        hub: NodeHub,
        instances: InstanceRegistry,
        jobs: JobStore,
        sessions: SessionStore,
        max_jobs_listed: int,
    ) -> None:
        """`max_jobs_listed`: GetSession lists a session's last jobs, at most this many."""
        self._max_jobs_listed = max_jobs_listed
        self._cache = cache
        self._hub = hub
        self._instances = instances
        self._jobs = jobs
        self._sessions = sessions

    async def GetSnapshot(
        self, request: registry_pb2.GetSnapshotRequest, context: Context
    ) -> registry_pb2.GetSnapshotResponse:
        return registry_pb2.GetSnapshotResponse(snapshot=convert.snapshot_to_proto(self._cache.current))

    async def WatchSnapshots(
        self, request: registry_pb2.WatchSnapshotsRequest, context: Context
    ) -> AsyncIterator[registry_pb2.WatchSnapshotsResponse]:
        async for snapshot in self._cache.watch(request.after_version, request.after_epoch):
            yield registry_pb2.WatchSnapshotsResponse(snapshot=convert.snapshot_to_proto(snapshot))
        # The watch ended because this instance is stopping: an ordered end the watcher can act on.
        await context.abort(grpc.StatusCode.UNAVAILABLE, "the scheduler is shutting down: watch again")

    async def ListNodes(
        self, request: registry_pb2.ListNodesRequest, context: Context
    ) -> registry_pb2.ListNodesResponse:
        snapshot = self._cache.current
        nodes: Iterable[NodeRecord] = snapshot.nodes.values()
        if request.HasField("language_pair"):
            async with domain_errors(context):
                pair = convert.pair_from_proto(request.language_pair)
                pair.validate()
            nodes = snapshot.nodes_for(pair)
        return registry_pb2.ListNodesResponse(
            nodes=[convert.node_to_proto(n, snapshot.pools_by_node.get(n.node_id, ())) for n in nodes],
            version=snapshot.version,
        )

    async def ListPools(
        self, request: registry_pb2.ListPoolsRequest, context: Context
    ) -> registry_pb2.ListPoolsResponse:
        snapshot = self._cache.current
        return registry_pb2.ListPoolsResponse(
            pools=[convert.pool_to_proto(p) for p in snapshot.pools], version=snapshot.version
        )

    async def DrainNode(
        self, request: registry_pb2.DrainNodeRequest, context: Context
    ) -> registry_pb2.DrainNodeResponse:
        async with domain_errors(context):
            if not request.node_id:
                raise InvalidArgument("node_id is required")
            record, version = await self._hub.drain_node(request.node_id, request.reason)
        snapshot = self._cache.current
        return registry_pb2.DrainNodeResponse(
            node=convert.node_to_proto(record, snapshot.pools_by_node.get(record.node_id, ())),
            version=version,
        )

    async def ListInstances(
        self, request: registry_pb2.ListInstancesRequest, context: Context
    ) -> registry_pb2.ListInstancesResponse:
        records = await self._instances.list()
        return registry_pb2.ListInstancesResponse(instances=[convert.instance_to_proto(r) for r in records])

    async def GetJob(
        self, request: registry_pb2.GetJobRequest, context: Context
    ) -> registry_pb2.GetJobResponse:
        async with domain_errors(context):
            try:
                session_id, index = parse_job_id(request.job_id)
            except ValueError as exc:
                raise InvalidArgument(f"job_id: {exc}") from None
            stored = (await self._jobs.records(session_id, [index], with_tts=False))[0]
            if stored.record is None:
                raise NotFound(f"no job {request.job_id} in the store (never created, or expired)")
        return registry_pb2.GetJobResponse(job=convert.job_to_proto(stored))

    async def GetSession(
        self, request: registry_pb2.GetSessionRequest, context: Context
    ) -> registry_pb2.GetSessionResponse:
        async with domain_errors(context):
            if not request.session_id or ":" in request.session_id:
                raise InvalidArgument("session_id is required (as SessionStarted gave it)")
            state = await self._sessions.get(request.session_id)
            if state is None:
                raise NotFound(f"no session {request.session_id} in the store (never opened, or expired)")
            first = max(0, state.next_index - self._max_jobs_listed)
            stored = await self._jobs.records(
                state.session_id, range(first, state.next_index), with_tts=False
            )
            alive = {r.instance_id for r in await self._instances.list() if r.alive}
        return registry_pb2.GetSessionResponse(
            session=convert.session_record_to_proto(state, state.owner in alive),
            jobs=[convert.job_to_proto(j) for j in stored if j.record is not None],
        )
