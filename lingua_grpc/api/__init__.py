"""gRPC servicers: thin translations between protobuf and the domain."""

from lingua_grpc.api.node_service import NodeServicer
from lingua_grpc.api.registry_service import RegistryServicer
from lingua_grpc.api.session_service import SessionServicer

__all__ = ["NodeServicer", "RegistryServicer", "SessionServicer"]
