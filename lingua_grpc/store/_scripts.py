"""The Lua scripts of the package's lua/ folder, each with a typed call.

Each script is registered once and called by SHA through redis-py's `Script`, which falls back to loading it
on NOSCRIPT (after a Redis restart or SCRIPT FLUSH). `ScriptBook` has one method per script: it takes named
arguments (the key layout among them), lays out KEYS and ARGV in the order of the script's header, and says how to decode the reply
into a value or an enum, so no call site counts ARGV positions or compares integer codes. A call is run
alone (`run`) or pipelined with calls of other hash slots in one round trip (`run_pipelined`). The scripts
are package data, read through `importlib.resources`, so an installed wheel finds them wherever it runs.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib.resources import files
from importlib.resources.abc import Traversable
from typing import Any, Generic, TypeVar

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from lingua_grpc.store._connection import text
from lingua_grpc.store._keys import InstanceKeys, JobKeys, RegistryKeys

LUA_DIR: Traversable = files(__package__) / "lua"
SCRIPT_NAMES = (
    "register_node",
    "heartbeat_node",
    "drain_node",
    "deregister_node",
    "expire_node",
    "start_job",
    "transition_job",
    "reserve_slot",
    "release_slot",
    "heartbeat_instance",
    "deregister_instance",
    "handoff",
    "renew_inbox",
    "claim_instance",
    "open_session",
    "claim_session",
    "close_session",
    "complete_job",
)

R = TypeVar("R")


@dataclass(frozen=True, slots=True)
class ScriptCall(Generic[R]):
    """One call of a script, ready to run: KEYS and ARGV as its header orders them, and its reply decoder."""

    script: AsyncScript
    keys: list[str]
    args: list[Any]
    decode: Callable[[Any], R]


class Reservation(enum.Enum):
    """reserve_slot's reply."""

    RESERVED = 1
    ALREADY_HELD = 2
    FULL = 0
    DRAINING = -1
    NODE_GONE = -2

    @property
    def held(self) -> bool:
        return self in (Reservation.RESERVED, Reservation.ALREADY_HELD)


class HeartbeatOutcome(enum.Enum):
    """heartbeat_node's reply."""

    RENEWED = 1
    UNKNOWN = 0  # not registered, or the lease lapsed: the node must register again
    SUPERSEDED = -1  # the node registered again on a newer connection


class DrainOutcome(enum.Enum):
    """drain_node's status."""

    DRAINING = 1
    ALREADY_DRAINING = 2
    UNKNOWN = 0


class RegisterOutcome(enum.Enum):
    """register_node's second reply."""

    CHANGED = 1  # new node, new capabilities, or it was draining: the registry version was bumped
    UNCHANGED = 0
    HELD_BY_ANOTHER = -1  # a live registration of the id belongs to another credential: nothing changed


class Claim(enum.Enum):
    """claim_instance's reply."""

    CLAIMED = 1  # this survivor takes over what the dead instance left
    ALIVE = 0  # its inbox lease still holds
    TAKEN = -1  # another survivor claimed it


@dataclass(frozen=True, slots=True)
class HandOff:
    """handoff's reply: the entry id, or why the message did not land."""

    entry_id: str | None
    full: bool = False  # the inbox is at its bound

    @property
    def delivered(self) -> bool:
        return self.entry_id is not None


def _hand_off(reply: Any) -> HandOff:
    if isinstance(reply, bytes | str):
        return HandOff(reply.decode() if isinstance(reply, bytes) else reply)
    return HandOff(None, full=int(reply) == -1)


class ClaimOutcome(enum.Enum):
    """claim_session's status."""

    CLAIMED = 1
    NOT_FOUND = 0
    ENDED = -1
    OTHER_CREDENTIAL = -2


@dataclass(frozen=True, slots=True)
class SessionClaim:
    """claim_session's reply: the outcome, the previous owner and the session's fields when claimed."""

    outcome: ClaimOutcome
    previous_owner: str = ""
    fields: dict[str, str] | None = None


def _claim(reply: Any) -> SessionClaim:
    outcome = ClaimOutcome(int(reply[0]))
    if outcome is not ClaimOutcome.CLAIMED:
        return SessionClaim(outcome)
    values = [v.decode() if isinstance(v, bytes) else str(v) for v in reply[1:]]
    fields = dict(zip(values[1::2], values[2::2], strict=True))
    return SessionClaim(outcome, values[0], fields)


@dataclass(frozen=True, slots=True)
class Completed:
    """complete_job's reply."""

    applied: bool  # the result was recorded now
    owner: str  # the instance owning the job's session ('' when not recorded): it delivers the result


@dataclass(frozen=True, slots=True)
class Started:
    """start_job's reply."""

    created: bool  # the job was recorded now
    attempt: int | None  # the attempt started (0: none asked); None when it moved on or the job is final


class ScriptBook:
    def __init__(self, redis: Redis, lua_dir: Traversable = LUA_DIR) -> None:
        self._redis = redis
        self._cluster = isinstance(redis, RedisCluster)
        self._scripts: dict[str, AsyncScript] = {}
        for entry in sorted(lua_dir.iterdir(), key=lambda e: e.name):
            if entry.name.endswith(".lua"):
                self._scripts[entry.name.removesuffix(".lua")] = redis.register_script(entry.read_text())
        missing = [name for name in SCRIPT_NAMES if name not in self._scripts]
        if missing:
            raise FileNotFoundError(f"Lua scripts missing from {lua_dir}: {', '.join(missing)}")

    async def load(self, redis: Redis) -> None:
        """Loads every script now, so the first calls need no NOSCRIPT round trip."""
        for script in self._scripts.values():
            await redis.script_load(script.script)

    async def run(self, call: ScriptCall[R]) -> R:
        return call.decode(await call.script(keys=call.keys, args=call.args))

    async def run_pipelined(self, *calls: ScriptCall[Any]) -> list[Any]:
        """Runs calls of different hash slots in one round trip (a pipeline, not a transaction); returns
        their decoded replies. After a Redis restart or SCRIPT FLUSH a script may be missing: only that one
        is run again, through `Script`, which loads it. The others already ran, and running them twice
        would be fenced or a no-op.

        On Redis Cluster (whose client refuses EVALSHA in pipelines) the calls go out at once, each to the
        node of its slot, and are awaited together: still one round trip of wall time."""
        if self._cluster:
            return list(await asyncio.gather(*(self.run(call) for call in calls)))
        async with self._redis.pipeline(transaction=False) as pipe:
            for call in calls:
                pipe.evalsha(call.script.sha, len(call.keys), *call.keys, *call.args)
            replies: list[Any] = await pipe.execute(raise_on_error=False)
        for i, call in enumerate(calls):
            if isinstance(replies[i], NoScriptError):
                replies[i] = await call.script(keys=call.keys, args=call.args)
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        return [call.decode(reply) for call, reply in zip(calls, replies, strict=True)]

    # Registry scripts: every key under the {registry} tag.

    @staticmethod
    def _node_keys(k: RegistryKeys, node_id: str) -> list[str]:
        return [k.node(node_id), k.lease(node_id), k.nodes, k.version, k.slots(node_id)]

    def register_node(
        self,
        k: RegistryKeys,
        node_id: str,
        *,
        capabilities_json: str,
        max_concurrency: int,
        instance_id: str,
        connection_id: str,
        lease_ms: int,
        credential: str,
        holding: Sequence[str] = (),
    ) -> ScriptCall[tuple[int, RegisterOutcome, list[str]]]:
        """`holding`: slot members ('job_id#attempt') of the attempts the node runs; its slot set becomes
        exactly these. Replies (version, outcome, slot members freed: held by attempts the node does not
        run)."""
        args = [node_id, capabilities_json, max_concurrency, instance_id, connection_id, lease_ms, credential]
        args += list(holding)
        return ScriptCall(
            self._scripts["register_node"],
            [*self._node_keys(k, node_id), k.epoch],
            args,
            lambda r: (int(r[0]), RegisterOutcome(int(r[1])), [text(m) for m in r[2]]),
        )

    def heartbeat_node(
        self, k: RegistryKeys, node_id: str, *, connection_id: str, load_json: str, lease_ms: int
    ) -> ScriptCall[HeartbeatOutcome]:
        return ScriptCall(
            self._scripts["heartbeat_node"],
            [k.node(node_id), k.lease(node_id)],
            [connection_id, load_json, lease_ms],
            lambda r: HeartbeatOutcome(int(r)),
        )

    def drain_node(self, k: RegistryKeys, node_id: str) -> ScriptCall[tuple[DrainOutcome, int]]:
        return ScriptCall(
            self._scripts["drain_node"],
            [k.node(node_id), k.version],
            [],
            lambda r: (DrainOutcome(int(r[0])), int(r[1])),
        )

    def deregister_node(self, k: RegistryKeys, node_id: str, *, connection_id: str = "") -> ScriptCall[bool]:
        """Removed? With a connection id, only that connection's registration is removed."""
        return ScriptCall(
            self._scripts["deregister_node"],
            self._node_keys(k, node_id),
            [node_id, connection_id],
            lambda r: bool(r[0]),
        )

    def expire_node(self, k: RegistryKeys, node_id: str) -> ScriptCall[bool]:
        return ScriptCall(
            self._scripts["expire_node"], self._node_keys(k, node_id), [node_id], lambda r: bool(r[0])
        )

    def reserve_slot(self, k: RegistryKeys, node_id: str, *, member: str) -> ScriptCall[Reservation]:
        return ScriptCall(
            self._scripts["reserve_slot"],
            [k.node(node_id), k.lease(node_id), k.slots(node_id)],
            [member],
            lambda r: Reservation(int(r)),
        )

    def release_slot(self, k: RegistryKeys, node_id: str, *, member: str) -> ScriptCall[bool]:
        return ScriptCall(
            self._scripts["release_slot"], [k.node(node_id), k.slots(node_id)], [member], lambda r: bool(r)
        )

    def heartbeat_instance(
        self,
        k: RegistryKeys,
        instance_id: str,
        *,
        address: str,
        lease_ms: int,
        record_ttl_ms: int,
        started_ms: int,
        nodes: int,
        sessions: int,
        jobs: int,
    ) -> ScriptCall[bool]:
        """Was the instance not recorded (new, or its record lost)?"""
        return ScriptCall(
            self._scripts["heartbeat_instance"],
            [k.instance(instance_id), k.instance_lease(instance_id), k.instances],
            [instance_id, address, lease_ms, started_ms, nodes, sessions, jobs, record_ttl_ms],
            lambda r: bool(r),
        )

    def deregister_instance(self, k: RegistryKeys, instance_id: str) -> ScriptCall[bool]:
        return ScriptCall(
            self._scripts["deregister_instance"],
            [k.instance(instance_id), k.instance_lease(instance_id), k.instances],
            [instance_id],
            lambda r: bool(r),
        )

    # Instance scripts: every key under the instance's own tag.

    def handoff(
        self, k: InstanceKeys, *, max_entries: int, fields: dict[str, str | int | bytes]
    ) -> ScriptCall[HandOff]:
        args: list[Any] = [max_entries]
        for name, value in fields.items():
            args += [name, value]
        return ScriptCall(self._scripts["handoff"], [k.lease, k.inbox], args, _hand_off)

    def renew_inbox(
        self, k: InstanceKeys, *, lease_ms: int, keep_ms: int, first: bool = False
    ) -> ScriptCall[bool]:
        """Renewed? False: a survivor claimed this instance as dead. `first`: a process starting under this
        id (its predecessor's claim is cleared)."""
        return ScriptCall(
            self._scripts["renew_inbox"],
            [k.lease, k.claim, k.inbox, k.sessions],
            [lease_ms, keep_ms, int(first)],
            lambda r: bool(r),
        )

    def claim_instance(self, k: InstanceKeys, *, claimer: str, keep_ms: int) -> ScriptCall[Claim]:
        return ScriptCall(
            self._scripts["claim_instance"], [k.lease, k.claim], [claimer, keep_ms], lambda r: Claim(int(r))
        )

    # Job scripts: every key under the job's session tag.

    def start_job(
        self,
        k: JobKeys,
        session_id: str,
        index: int,
        *,
        job_id: str,
        source_language: str,
        target_language: str,
        sample_rate_hz: int,
        tts: bool,
        audio: bytes,
        job_ttl_ms: int,
        audio_ttl_ms: int,
        current_attempt: int,
        node_id: str,
        owner: str,
        audio_end: int = 0,
        answers_sent: int = 0,
        duration_ms: int = 0,
    ) -> ScriptCall[Started]:
        """`audio_end`, `answers_sent`: the session's progress, recorded with a new job."""
        return ScriptCall(
            self._scripts["start_job"],
            [
                k.job(session_id, index),
                k.audio(session_id, index),
                k.live(session_id),
                k.session(session_id),
            ],
            [
                job_id,
                session_id,
                index,
                source_language,
                target_language,
                sample_rate_hz,
                int(tts),
                audio,
                job_ttl_ms,
                audio_ttl_ms,
                current_attempt,
                node_id,
                owner,
                audio_end,
                answers_sent,
                duration_ms,
            ],
            lambda r: Started(bool(r[0]), int(r[1]) if int(r[1]) >= 0 else None),
        )

    def complete_job(
        self,
        k: JobKeys,
        session_id: str,
        index: int,
        *,
        attempt: int,
        allowed: tuple[str, ...],
        tts_audio: bytes,
        tts_ttl_ms: int,
        fields: dict[str, str | int | bytes],
    ) -> ScriptCall[Completed]:
        args: list[Any] = [attempt, " ".join(allowed), tts_audio, tts_ttl_ms]
        for name, value in fields.items():
            args += [name, value]
        return ScriptCall(
            self._scripts["complete_job"],
            [
                k.job(session_id, index),
                k.live(session_id),
                k.session(session_id),
                k.tts(session_id, index),
                k.audio(session_id, index),
                k.tts_kept(session_id),
            ],
            args,
            lambda r: Completed(bool(int(r[0])), text(r[1])),
        )

    # Session scripts: the session's hash, under its tag with its jobs.

    def open_session(
        self,
        k: JobKeys,
        session_id: str,
        *,
        source_language: str,
        target_language: str,
        sample_rate_hz: int,
        options_json: str,
        credential: str,
        client_name: str,
        owner: str,
        ttl_ms: int,
        epoch: int = 1,
        next_index: int = 0,
        audio_offset: int = 0,
        sent: int = 0,
    ) -> ScriptCall[bool]:
        return ScriptCall(
            self._scripts["open_session"],
            [k.session(session_id)],
            [
                session_id,
                source_language,
                target_language,
                sample_rate_hz,
                options_json,
                credential,
                client_name,
                owner,
                ttl_ms,
                epoch,
                next_index,
                audio_offset,
                sent,
            ],
            lambda r: bool(r),
        )

    def claim_session(
        self, k: JobKeys, session_id: str, *, claimer: str, credential: str, ttl_ms: int
    ) -> ScriptCall[SessionClaim]:
        return ScriptCall(
            self._scripts["claim_session"], [k.session(session_id)], [claimer, credential, ttl_ms], _claim
        )

    def close_session(
        self, k: JobKeys, session_id: str, *, owner: str, epoch: int, sent: int, ended: bool, ttl_ms: int
    ) -> ScriptCall[bool]:
        """Recorded? `ended`: over for good, and its speech (job audio, results' TTS) deleted now."""
        return ScriptCall(
            self._scripts["close_session"],
            [k.session(session_id), k.live(session_id), k.tts_kept(session_id)],
            [owner, epoch, sent, int(ended), ttl_ms, k.audio_prefix(session_id), k.tts_prefix(session_id)],
            lambda r: bool(r),
        )

    def transition_job(
        self,
        k: JobKeys,
        session_id: str,
        index: int,
        *,
        attempt: int,
        allowed: tuple[str, ...],
        to: str,
        fields: dict[str, str | int | bytes],
    ) -> ScriptCall[bool]:
        """Applied? Only for the job's current `attempt` and a current state among `allowed`. A final `to`
        deletes the utterance's audio."""
        args: list[Any] = [attempt, " ".join(allowed), to]
        for name, value in fields.items():
            args += [name, value]
        return ScriptCall(
            self._scripts["transition_job"],
            [k.job(session_id, index), k.live(session_id), k.audio(session_id, index)],
            args,
            lambda r: bool(r),
        )
