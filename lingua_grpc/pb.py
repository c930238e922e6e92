"""The generated lingua.v1 messages and stubs, under one public import path.

from lingua_grpc.pb import session_pb2, session_pb2_grpc
"""

from lingua_grpc._proto.lingua.v1 import (
    common_pb2,
    node_pb2,
    node_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
    session_pb2,
    session_pb2_grpc,
)

__all__ = [
    "common_pb2",
    "node_pb2",
    "node_pb2_grpc",
    "registry_pb2",
    "registry_pb2_grpc",
    "session_pb2",
    "session_pb2_grpc",
]
