"""Resume tokens: opaque to clients, signed with a key the fleet shares, bound to one session, expiring.

A token is `v1.<session id>.<expiry, ms since the Unix epoch>.<HMAC-SHA256 of the rest, base64url>`. Any
instance with the key can check one without reading the store; a changed character, another key or a
passed expiry is refused. Pure: time comes from the clock given.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

from lingua_grpc.clock import Clock
from lingua_grpc.errors import FailedPrecondition, InvalidArgument

_VERSION = "v1"
MAX_TOKEN_CHARS = 256  # a token is ~100 characters; anything longer is refused before any hashing


class ResumeTokens:
    def __init__(self, key: bytes, ttl_ms: int, clock: Clock) -> None:
        if len(key) < 16:
            raise ValueError("the resume token key must have at least 16 bytes")
        self._key = key
        self.ttl_ms = ttl_ms
        self._clock = clock

    def issue(self, session_id: str) -> str:
        """A token for `session_id`, valid `ttl_ms` from now."""
        body = f"{_VERSION}.{session_id}.{self._clock.now_ms() + self.ttl_ms}"
        return f"{body}.{self._sign(body)}"

    def session_of(self, token: str) -> str:
        """The session a valid token resumes. InvalidArgument for a token that is not one of this fleet's
        (malformed, altered, another key); FailedPrecondition for an expired one."""
        if len(token) > MAX_TOKEN_CHARS:
            raise InvalidArgument(
                f"resume_token is over {MAX_TOKEN_CHARS} characters: not a Lingua resume token"
            )
        body, _, signature = token.rpartition(".")
        parts = body.split(".")
        if len(parts) != 3 or parts[0] != _VERSION or not parts[2].isdigit() or not parts[1]:
            raise InvalidArgument(
                "resume_token is not a Lingua resume token: pass the one SessionStarted gave"
            )
        if not hmac.compare_digest(signature.encode(), self._sign(body).encode()):
            raise InvalidArgument(
                "resume_token does not verify: it was altered, or issued by a fleet with another"
                " --resume-key-file"
            )
        session_id, expires_ms = parts[1], int(parts[2])
        if self._clock.now_ms() >= expires_ms:
            raise FailedPrecondition(
                f"resume_token expired {self._clock.now_ms() - expires_ms} ms ago (tokens last"
                f" {self.ttl_ms} ms): start a new session"
            )
        return session_id

    def _sign(self, body: str) -> str:
        digest = hmac.new(self._key, body.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
