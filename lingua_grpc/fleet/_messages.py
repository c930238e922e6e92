"""What scheduler instances hand each other through their inboxes, and its encoding as Redis Stream fields.

Owner -> holder (the instance holding the node's stream): `Assign` an attempt, `Cancel` it, `Reroute` it to
a new owner (a session resumed there). Holder -> owner (the instance owning the job's session): `Relayed`
node messages about it, `Lost` when the holder can no longer reach the node. New owner -> old owner:
`Moved`, its session was resumed elsewhere. Every message about a job names the attempt, so the receiver
applies it only while that attempt is current (fenced as node messages are). Pure: no I/O.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from lingua_grpc.jobs import (
    Assignment,
    JobAccepted,
    JobEvent,
    JobFailed,
    JobOutput,
    JobProgress,
    JobRejected,
    JobSpec,
    Stage,
)
from lingua_grpc.registry import LanguagePair

Fields = dict[str, str | int | bytes]


class Kind(enum.Enum):
    ASSIGN = "assign"
    CANCEL = "cancel"
    EVENT = "event"
    LOST = "lost"
    REROUTE = "reroute"
    MOVED = "moved"


@dataclass(frozen=True, slots=True)
class Assign:
    owner: str  # the instance to send what the node says about it
    node_id: str
    assignment: Assignment
    sent_ms: int  # sender's wall clock, for the hand-off latency


@dataclass(frozen=True, slots=True)
class Cancel:
    node_id: str
    job_id: str
    attempt: int
    reason: str
    sent_ms: int


@dataclass(frozen=True, slots=True)
class Relayed:
    holder: str
    node_id: str
    event: JobEvent
    sent_ms: int
    recorded: bool = False  # a result the sender already recorded in the store: only deliver it


@dataclass(frozen=True, slots=True)
class Lost:
    """The holder cannot reach the node for this attempt (its stream ended, or it is not held there)."""

    holder: str
    node_id: str
    job_id: str
    attempt: int
    why: str
    node_gone: bool  # the node's stream ended (the attempt failed there), not only "not held here"
    sent_ms: int


@dataclass(frozen=True, slots=True)
class Reroute:
    """The session of this attempt was resumed on `owner`: what the node says about it goes there now. The
    holder answers with the attempt accepted (the node has it) or lost (it does not)."""

    owner: str
    node_id: str
    job_id: str
    attempt: int
    sent_ms: int


@dataclass(frozen=True, slots=True)
class Moved:
    """The session was resumed on `owner` (ownership epoch `epoch`): the receiver ends its stream."""

    owner: str
    session_id: str
    epoch: int
    sent_ms: int


Message = Assign | Cancel | Relayed | Lost | Reroute | Moved

_EVENTS: dict[str, type[JobEvent]] = {
    "accepted": JobAccepted,
    "rejected": JobRejected,
    "progress": JobProgress,
    "output": JobOutput,
    "failed": JobFailed,
}
_EVENT_NAMES = {cls: name for name, cls in _EVENTS.items()}
_DECODERS: dict[str, Callable[[bytes], Any]] = {
    "str": lambda b: b.decode(),
    "int": int,
    "bool": lambda b: b == b"1",
    "bytes": bytes,
    "Stage": lambda b: Stage(b.decode()),
}


def _value(v: object) -> str | int | bytes:
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, enum.Enum):
        return str(v.value)
    if isinstance(v, str | int | bytes):
        return v
    raise TypeError(f"cannot encode {type(v).__name__}")


def encode(message: Message) -> Fields:
    """The message as Stream entry fields."""
    if isinstance(message, Assign):
        a = message.assignment
        return {
            "kind": Kind.ASSIGN.value,
            "owner": message.owner,
            "node_id": message.node_id,
            "session_id": a.spec.session_id,
            "index": a.spec.index,
            "source": a.spec.pair.source,
            "target": a.spec.pair.target,
            "sample_rate_hz": a.spec.sample_rate_hz,
            "tts": int(a.spec.tts),
            "audio": a.spec.audio,
            "attempt": a.attempt,
            "deadline_ms": a.deadline_ms,
            "sent_ms": message.sent_ms,
        }
    if isinstance(message, Relayed):
        out: Fields = {
            "kind": Kind.EVENT.value,
            "holder": message.holder,
            "node_id": message.node_id,
            "event": _EVENT_NAMES[type(message.event)],
            "sent_ms": message.sent_ms,
            "recorded": int(message.recorded),
        }
        for f in dataclasses.fields(message.event):
            out[f"e.{f.name}"] = _value(getattr(message.event, f.name))
        return out
    kind = {Cancel: Kind.CANCEL, Lost: Kind.LOST, Reroute: Kind.REROUTE, Moved: Kind.MOVED}[type(message)]
    return {
        "kind": kind.value,
        **{f.name: _value(getattr(message, f.name)) for f in dataclasses.fields(message)},
    }


def decode(raw: Mapping[bytes, bytes]) -> Message:
    """A Stream entry's fields as a message; ValueError (or KeyError) when they are not one."""
    f = {k.decode(): v for k, v in raw.items()}

    def s(name: str) -> str:
        return f[name].decode()

    def i(name: str) -> int:
        return int(f[name])

    kind = Kind(s("kind"))
    if kind is Kind.ASSIGN:
        spec = JobSpec(
            s("session_id"),
            i("index"),
            LanguagePair(s("source"), s("target")),
            i("sample_rate_hz"),
            f["tts"] == b"1",
            f["audio"],
        )
        return Assign(
            s("owner"), s("node_id"), Assignment(spec, i("attempt"), i("deadline_ms")), i("sent_ms")
        )
    if kind is Kind.EVENT:
        cls = _EVENTS[s("event")]
        values = {fl.name: _DECODERS[str(fl.type)](f[f"e.{fl.name}"]) for fl in dataclasses.fields(cls)}
        return Relayed(
            s("holder"), s("node_id"), cls(**values), i("sent_ms"), f.get("recorded", b"0") == b"1"
        )
    if kind is Kind.CANCEL:
        return Cancel(s("node_id"), s("job_id"), i("attempt"), s("reason"), i("sent_ms"))
    if kind is Kind.REROUTE:
        return Reroute(s("owner"), s("node_id"), s("job_id"), i("attempt"), i("sent_ms"))
    if kind is Kind.MOVED:
        return Moved(s("owner"), s("session_id"), i("epoch"), i("sent_ms"))
    return Lost(
        s("holder"), s("node_id"), s("job_id"), i("attempt"), s("why"), f["node_gone"] == b"1", i("sent_ms")
    )
