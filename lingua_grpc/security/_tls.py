"""TLS for the scheduler's listener, and what counts as a loopback address."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

import grpc


@dataclass(frozen=True, slots=True)
class ServerTls:
    cert_file: str
    key_file: str
    client_ca_file: str = ""  # set: clients must present a certificate signed by this CA (mTLS)

    def credentials(self) -> grpc.ServerCredentials:
        return server_credentials(self)


def server_credentials(tls: ServerTls) -> grpc.ServerCredentials:
    """Reads the PEM files now, so a missing or unreadable one stops the start with its path."""
    cert = _read(tls.cert_file, "--tls-cert")
    key = _read(tls.key_file, "--tls-key")
    ca = _read(tls.client_ca_file, "--tls-client-ca") if tls.client_ca_file else None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=ca, require_client_auth=ca is not None
    )


def _read(path: str, flag: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"{flag} {path}: {exc.strerror or exc}") from None


def is_loopback(host: str) -> bool:
    """Whether a listen host reaches only this machine (127.0.0.0/8, ::1, localhost)."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name other than localhost may resolve anywhere
