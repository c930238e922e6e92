"""Protobuf <-> domain conversion for every service: the only module here that touches both sides."""

from __future__ import annotations

from lingua_grpc.nodes import DrainCommand, Outgoing, ReregisterCommand
from lingua_grpc.pb import common_pb2, node_pb2, registry_pb2
from lingua_grpc.registry import (
    Gpu,
    LanguagePair,
    NodeCapabilities,
    NodeLoad,
    NodeRecord,
    NodeState,
    Pool,
    Registration,
    RegistrySnapshot,
)

_STATE = {NodeState.UP: common_pb2.NODE_STATE_UP, NodeState.DRAINING: common_pb2.NODE_STATE_DRAINING}


def pair_from_proto(p: common_pb2.LanguagePair) -> LanguagePair:
    return LanguagePair(p.source_language.strip(), p.target_language.strip())


def pair_to_proto(p: LanguagePair) -> common_pb2.LanguagePair:
    return common_pb2.LanguagePair(source_language=p.source, target_language=p.target)


def capabilities_from_proto(c: common_pb2.NodeCapabilities) -> NodeCapabilities:
    return NodeCapabilities(
        asr_languages=tuple(c.asr_languages),
        translation_pairs=tuple(pair_from_proto(p) for p in c.translation_pairs),
        tts_languages=tuple(c.tts_languages),
        gpus=tuple(Gpu(g.index, g.name, g.uuid, g.memory_total_bytes) for g in c.gpus),
        max_concurrency=c.max_concurrency,
        agent_version=c.agent_version,
        labels=tuple(sorted(c.labels.items())),
    )


def capabilities_to_proto(c: NodeCapabilities) -> common_pb2.NodeCapabilities:
    return common_pb2.NodeCapabilities(
        asr_languages=c.asr_languages,
        translation_pairs=[pair_to_proto(p) for p in c.translation_pairs],
        tts_languages=c.tts_languages,
        gpus=[
            common_pb2.Gpu(index=g.index, name=g.name, uuid=g.uuid, memory_total_bytes=g.memory_total_bytes)
            for g in c.gpus
        ],
        max_concurrency=c.max_concurrency,
        agent_version=c.agent_version,
        labels=dict(c.labels),
    )


def registration_from_proto(r: node_pb2.Register) -> Registration:
    return Registration(node_id=r.node_id, capabilities=capabilities_from_proto(r.capabilities))


def load_from_proto(load: common_pb2.NodeLoad) -> NodeLoad:
    return NodeLoad(
        running_jobs=load.running_jobs,
        gpu_utilization=load.gpu_utilization,
        gpu_memory_used_bytes=load.gpu_memory_used_bytes,
        cpu_utilization=load.cpu_utilization,
    )


def load_to_proto(load: NodeLoad) -> common_pb2.NodeLoad:
    return common_pb2.NodeLoad(
        running_jobs=load.running_jobs,
        gpu_utilization=load.gpu_utilization,
        gpu_memory_used_bytes=load.gpu_memory_used_bytes,
        cpu_utilization=load.cpu_utilization,
    )


def outgoing_to_proto(message: Outgoing) -> node_pb2.ConnectResponse:
    if isinstance(message, DrainCommand):
        return node_pb2.ConnectResponse(drain=node_pb2.Drain(reason=message.reason))
    if isinstance(message, ReregisterCommand):
        return node_pb2.ConnectResponse(reregister=node_pb2.Reregister(reason=message.reason))
    raise TypeError(f"no protobuf form for {message!r}")


def node_to_proto(node: NodeRecord, pools: tuple[str, ...] = ()) -> registry_pb2.Node:
    return registry_pb2.Node(
        node_id=node.node_id,
        state=_STATE[node.state],
        capabilities=capabilities_to_proto(node.capabilities),
        load=load_to_proto(node.load),
        reserved_slots=node.reserved_slots,
        scheduler_instance_id=node.instance_id,
        registered_unix_ms=node.registered_ms,
        last_heartbeat_unix_ms=node.last_heartbeat_ms,
        lease_remaining_ms=node.lease_remaining_ms,
        pools=pools,
    )


def pool_to_proto(pool: Pool) -> registry_pb2.Pool:
    return registry_pb2.Pool(
        name=pool.name,
        language_pair=pair_to_proto(pool.pair),
        node_ids=pool.node_ids,
        configured=pool.configured,
    )


def snapshot_to_proto(s: RegistrySnapshot) -> registry_pb2.RegistrySnapshot:
    return registry_pb2.RegistrySnapshot(
        version=s.version,
        nodes=[node_to_proto(n, s.pools_by_node.get(n.node_id, ())) for n in s.nodes.values()],
        pools=[pool_to_proto(p) for p in s.pools],
        built_unix_ms=s.built_ms,
    )
