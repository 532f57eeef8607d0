"""The native stack's test certificates, made once with trustme and kept in its folder.

One CA signs a server certificate for ``localhost`` and ``127.0.0.1`` (the broker's TLS
listeners and PostgreSQL present it), a client certificate (for mutual TLS and
PostgreSQL's ``cert`` authentication) and an expired server certificate. A second CA,
which signed nothing the servers present, is the "wrong CA" a client may be given. Keys
are PKCS#8 PEM without a passphrase: the form both Kafka's PEM key store and PostgreSQL
read. Nothing here is a secret worth keeping: they exist for loopback tests only.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from pathlib import Path

import trustme
from cryptography.hazmat.primitives import serialization

#: The names the server certificate is valid for; 127.0.0.2, also loopback, is not one.
SERVER_NAMES = ("localhost", "127.0.0.1")
CLIENT_NAME = "customer-service"


@dataclass(frozen=True)
class Certificates:
    """Where each file of the stack's certificates lives."""

    directory: Path

    @property
    def ca(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def other_ca(self) -> Path:
        """A CA that signed none of the servers' certificates."""
        return self.directory / "other-ca.pem"

    @property
    def server(self) -> Path:
        """The server's private key followed by its certificate chain."""
        return self.directory / "server.pem"

    @property
    def server_cert(self) -> Path:
        return self.directory / "server.crt"

    @property
    def server_key(self) -> Path:
        return self.directory / "server.key"

    @property
    def expired_server(self) -> Path:
        return self.directory / "expired-server.pem"

    @property
    def client_cert(self) -> Path:
        return self.directory / "client.crt"

    @property
    def client_key(self) -> Path:
        return self.directory / "client.key"

    def files(self) -> tuple[Path, ...]:
        return (
            self.ca,
            self.other_ca,
            self.server,
            self.server_cert,
            self.server_key,
            self.expired_server,
            self.client_cert,
            self.client_key,
        )

    def ensure(self) -> Certificates:
        """Make the certificates unless every file is already there; return self."""
        if all(path.exists() for path in self.files()):
            return self
        self.directory.mkdir(parents=True, exist_ok=True)
        ca, other_ca = trustme.CA(), trustme.CA()
        now = datetime.datetime.now(datetime.UTC)
        server = ca.issue_cert(*SERVER_NAMES, not_after=now + datetime.timedelta(days=3650))
        expired = ca.issue_cert(
            *SERVER_NAMES,
            not_before=now - datetime.timedelta(days=30),
            not_after=now - datetime.timedelta(days=1),
        )
        client = ca.issue_cert(CLIENT_NAME, common_name=CLIENT_NAME)
        ca.cert_pem.write_to_path(str(self.ca))
        other_ca.cert_pem.write_to_path(str(self.other_ca))
        server_key = _pkcs8(server.private_key_pem.bytes())
        _write_private(self.server_key, server_key)
        self.server_cert.write_bytes(_chain(server))
        _write_private(self.server, server_key + _chain(server))
        _write_private(
            self.expired_server, _pkcs8(expired.private_key_pem.bytes()) + _chain(expired)
        )
        _write_private(self.client_key, _pkcs8(client.private_key_pem.bytes()))
        self.client_cert.write_bytes(_chain(client))
        return self


def _write_private(path: Path, content: bytes) -> None:
    """Write a file only its owner can read, from its creation on."""
    path.unlink(missing_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(content)


def _chain(leaf: trustme.LeafCert) -> bytes:
    return b"".join(blob.bytes() for blob in leaf.cert_chain_pems)


def _pkcs8(pem: bytes) -> bytes:
    key = serialization.load_pem_private_key(pem, password=None)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
