"""What the store keeps of a session, so that any instance of the fleet can carry it on when its client
resumes there: its pair, format and options, its owner (and the epoch of that ownership), how far it got.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
from dataclasses import dataclass

from redis.asyncio import Redis

from lingua_grpc.errors import FailedPrecondition, NotFound, PermissionDenied
from lingua_grpc.registry import LanguagePair
from lingua_grpc.sessions._options import SessionOptions
from lingua_grpc.store import ClaimOutcome, JobKeys, ScriptBook, text


@dataclass(frozen=True, slots=True)
class SessionState:
    """A session as recorded."""

    session_id: str
    pair: LanguagePair
    sample_rate_hz: int
    options: SessionOptions
    credential: str
    client_name: str
    owner: str
    epoch: int
    next_index: int  # the next utterance takes this index
    audio_offset: int  # audio recorded up to here (samples since the session's first)
    sent: int  # answers its owners wrote to a client stream
    ended: bool
    created_ms: int
    updated_ms: int

    @classmethod
    def from_fields(cls, f: dict[str, str]) -> SessionState:
        return cls(
            f["session_id"],
            LanguagePair(f["source_language"], f["target_language"]),
            int(f["sample_rate_hz"]),
            SessionOptions(**json.loads(f["options"])),
            f.get("credential", ""),
            f.get("client_name", ""),
            f.get("owner", ""),
            int(f.get("epoch", 0)),
            int(f.get("next_index", 0)),
            int(f.get("audio_offset", 0)),
            int(f.get("sent", 0)),
            f.get("ended") == "1",
            int(f.get("created_ms", 0)),
            int(f.get("updated_ms", 0)),
        )


@dataclass(frozen=True, slots=True)
class Claimed:
    state: SessionState  # as it stands after the claim (this instance owns it, at `state.epoch`)
    previous_owner: str


@dataclass(frozen=True, slots=True)
class SessionPosition:
    """Where a session stands: its ownership epoch, next utterance index, audio recorded, answers sent."""

    epoch: int = 1
    next_index: int = 0
    audio_offset: int = 0
    sent: int = 0


class SessionStore:
    def __init__(
        self, redis: Redis, keys: JobKeys, scripts: ScriptBook, instance_id: str, ttl_ms: int
    ) -> None:
        """`ttl_ms`: how long a session's record stays without progress (its jobs' TTL)."""
        self._redis = redis
        self._keys = keys
        self._scripts = scripts
        self.instance_id = instance_id
        self._ttl_ms = ttl_ms

    async def open(
        self,
        session_id: str,
        pair: LanguagePair,
        sample_rate_hz: int,
        options: SessionOptions,
        credential: str,
        client_name: str,
        position: SessionPosition | None = None,
    ) -> bool:
        """Records a session owned here; `position`: where a live session stands, for one recorded again
        after Redis lost its data. False when it is recorded already (nothing changed)."""
        at = position or SessionPosition()
        return await self._scripts.run(
            self._scripts.open_session(
                self._keys,
                session_id,
                source_language=pair.source,
                target_language=pair.target,
                sample_rate_hz=sample_rate_hz,
                options_json=json.dumps(dataclasses.asdict(options)),
                credential=credential,
                client_name=client_name[:256],
                owner=self.instance_id,
                ttl_ms=self._ttl_ms,
                epoch=at.epoch,
                next_index=at.next_index,
                audio_offset=at.audio_offset,
                sent=at.sent,
            )
        )

    async def claim(self, session_id: str, credential: str) -> Claimed:
        """This instance owns the session from now on. NotFound, FailedPrecondition (it ended) or
        PermissionDenied (another credential's), with nothing changed."""
        claim = await self._scripts.run(
            self._scripts.claim_session(
                self._keys, session_id, claimer=self.instance_id, credential=credential, ttl_ms=self._ttl_ms
            )
        )
        if claim.outcome is ClaimOutcome.NOT_FOUND:
            raise NotFound(
                f"session {session_id} is not in the scheduler's store (it expired, or the store lost its"
                " data): start a new session"
            )
        if claim.outcome is ClaimOutcome.ENDED:
            raise FailedPrecondition(f"session {session_id} already ended: start a new session")
        if claim.outcome is ClaimOutcome.OTHER_CREDENTIAL or claim.fields is None:
            raise PermissionDenied(f"session {session_id} was opened with another credential")
        return Claimed(SessionState.from_fields(claim.fields), claim.previous_owner)

    async def close(self, session_id: str, epoch: int, sent: int, ended: bool) -> bool:
        """Records the owner's stream's end: answers sent, and whether the session is over for good. False
        when the session is another instance's now (nothing recorded)."""
        return await self._scripts.run(
            self._scripts.close_session(
                self._keys,
                session_id,
                owner=self.instance_id,
                epoch=epoch,
                sent=sent,
                ended=ended,
                ttl_ms=self._ttl_ms,
            )
        )

    async def get(self, session_id: str) -> SessionState | None:
        raw = await self._redis.hgetall(self._keys.session(session_id))
        if not raw:
            return None
        return SessionState.from_fields({text(k): text(v) for k, v in raw.items()})


async def fleet_resume_key(redis: Redis, key_name: str) -> bytes:
    """The fleet's resume-token key kept in Redis: made once by whichever instance comes first, read by the
    others (for operators who did not give a --resume-key-file)."""
    for _ in range(2):  # deleted between the two calls: once more
        await redis.set(key_name, secrets.token_bytes(32), nx=True)
        value = await redis.get(key_name)
        if value is not None:
            return value if isinstance(value, bytes) else value.encode()
    raise RuntimeError("cannot keep the resume-token key in Redis")
