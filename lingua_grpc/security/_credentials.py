"""Credentials: who may call what. Pure: the auth file's text in, a lookup table out.

The auth file (TOML) lists credentials; it holds only the SHA-256 of each token, so reading it gives no
token away:

    [[credentials]]
    name = "gpu-fleet-a"          # in logs and metrics; the token never is
    token_sha256 = "9f86d08..."   # sha256 of the token, hex (`printf %s TOKEN | sha256sum`)
    role = "node"                 # client | node | operator
    node_ids = ["gpu-a-*"]        # node: the ids it may register (glob patterns); required for nodes
    # max_sessions = 50           # client: concurrent sessions under this credential on one instance
"""

from __future__ import annotations

import enum
import fnmatch
import hashlib
import hmac
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_HEX = frozenset("0123456789abcdef")


class Role(enum.Enum):
    CLIENT = "client"
    NODE = "node"
    OPERATOR = "operator"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling, as the servicers see it: never the token, only what it grants."""

    name: str
    role: Role | None  # None: credentials are off (loopback or --insecure), every role is granted
    node_ids: tuple[str, ...] = ("*",)
    max_sessions: int = 0  # 0: no limit of its own

    def may_act_as(self, role: Role) -> bool:
        return self.role is None or self.role is role

    def may_register(self, node_id: str) -> bool:
        return any(fnmatch.fnmatchcase(node_id, pattern) for pattern in self.node_ids)


ANONYMOUS = Principal("anonymous", None)


@dataclass(frozen=True, slots=True)
class Credential:
    digest: bytes  # sha256 of the token
    principal: Principal


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class CredentialBook:
    """The credentials in force. `authenticate` compares the presented token's digest with every entry in
    constant time, so neither timing nor an early exit tells which entry (or how much of one) matched."""

    def __init__(self, credentials: Iterable[Credential]) -> None:
        self._credentials = tuple(credentials)

    def authenticate(self, token: str) -> Principal | None:
        digest = token_digest(token)
        found: Principal | None = None
        for credential in self._credentials:
            if hmac.compare_digest(credential.digest, digest):
                found = credential.principal
        return found

    def __len__(self) -> int:
        return len(self._credentials)

    @property
    def principals(self) -> dict[str, Principal]:
        return {c.principal.name: c.principal for c in self._credentials}

    @classmethod
    def load(cls, path: str | Path) -> CredentialBook:
        """Reads and checks an auth file; raises ValueError naming the entry and field at fault."""
        try:
            with open(path, "rb") as f:
                data = tomllib.load(f)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ValueError(f"auth file {path}: {exc}") from None
        return cls.parse(data, str(path))

    @classmethod
    def parse(cls, data: Mapping[str, Any], source: str = "auth file") -> CredentialBook:
        entries = data.get("credentials")
        if not isinstance(entries, list) or not entries:
            raise ValueError(f"{source}: needs at least one [[credentials]] entry")
        credentials: list[Credential] = []
        names: set[str] = set()
        digests: set[bytes] = set()
        for i, raw in enumerate(entries):
            where = f"{source}: credentials[{i}]"
            if not isinstance(raw, dict):
                raise ValueError(f"{where}: must be a table")
            unknown = set(raw) - {"name", "token_sha256", "role", "node_ids", "max_sessions"}
            if unknown:
                raise ValueError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
            name = raw.get("name")
            if not isinstance(name, str) or not name or len(name) > 128:
                raise ValueError(f"{where}: name must be a non-empty string of at most 128 characters")
            where = f"{where} ({name})"
            if name in names:
                raise ValueError(f"{where}: the name is used twice")
            names.add(name)
            hexdigest = raw.get("token_sha256")
            if not isinstance(hexdigest, str) or len(hexdigest) != 64 or not set(hexdigest.lower()) <= _HEX:
                raise ValueError(
                    f"{where}: token_sha256 must be 64 hex digits (the token's SHA-256, never the token)"
                )
            digest = bytes.fromhex(hexdigest)
            if digest in digests:
                raise ValueError(f"{where}: the same token is listed twice")
            digests.add(digest)
            try:
                role = Role(raw.get("role"))
            except ValueError:
                raise ValueError(f"{where}: role must be client, node or operator") from None
            node_ids = raw.get("node_ids", [])
            if not isinstance(node_ids, list) or not all(isinstance(n, str) and n for n in node_ids):
                raise ValueError(f'{where}: node_ids must be a list of node id patterns such as ["gpu-a-*"]')
            if role is Role.NODE and not node_ids:
                raise ValueError(f"{where}: a node credential needs node_ids (the ids it may register)")
            if role is not Role.NODE and node_ids:
                raise ValueError(f"{where}: node_ids apply to node credentials only")
            max_sessions = raw.get("max_sessions", 0)
            if not isinstance(max_sessions, int) or max_sessions < 0:
                raise ValueError(f"{where}: max_sessions must be a whole number, 0 for no limit")
            if role is not Role.CLIENT and max_sessions:
                raise ValueError(f"{where}: max_sessions applies to client credentials only")
            principal = Principal(name, role, tuple(node_ids), max_sessions)
            credentials.append(Credential(digest, principal))
        return cls(credentials)
