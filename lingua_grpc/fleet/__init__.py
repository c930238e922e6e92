"""The fleet: scheduler instances sharing one Redis, each recorded with a lease and what it holds."""

from lingua_grpc.fleet._instances import Holdings, InstanceHeartbeat, InstanceRecord, InstanceRegistry

__all__ = ["Holdings", "InstanceHeartbeat", "InstanceRecord", "InstanceRegistry"]
