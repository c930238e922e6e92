"""Who may call what: credentials, roles, the server interceptor that checks them, and TLS."""

from lingua_grpc.security._bounds import Bound, MessageBounds, MessageTooLarge
from lingua_grpc.security._credentials import (
    ANONYMOUS,
    Credential,
    CredentialBook,
    Principal,
    Role,
    token_digest,
)
from lingua_grpc.security._gate import (
    ROLE_BY_SERVICE,
    AccessGate,
    AuthInterceptor,
    current_principal,
    on_revoke,
)
from lingua_grpc.security._tls import ServerTls, is_loopback, server_credentials

__all__ = [
    "ANONYMOUS",
    "ROLE_BY_SERVICE",
    "AccessGate",
    "AuthInterceptor",
    "Bound",
    "Credential",
    "CredentialBook",
    "MessageBounds",
    "MessageTooLarge",
    "Principal",
    "Role",
    "ServerTls",
    "current_principal",
    "is_loopback",
    "on_revoke",
    "server_credentials",
    "token_digest",
]
