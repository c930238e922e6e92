"""The fleet: scheduler instances sharing one Redis. Each records itself with a lease and what it holds, hands
attempts for nodes it does not hold to the instance that does (and relays what its nodes say back), and
takes over what a dead instance left."""

from lingua_grpc.dispatch import VIA
from lingua_grpc.fleet._inbox import Courier, Inbox, InboxSettings
from lingua_grpc.fleet._instances import Holdings, InstanceHeartbeat, InstanceRecord, InstanceRegistry
from lingua_grpc.fleet._recovery import Recovered, Recovery
from lingua_grpc.fleet._relay import FleetTransport, Relay

__all__ = [
    "VIA",
    "Courier",
    "FleetTransport",
    "Holdings",
    "Inbox",
    "InboxSettings",
    "InstanceHeartbeat",
    "InstanceRecord",
    "InstanceRegistry",
    "Recovered",
    "Recovery",
    "Relay",
]
