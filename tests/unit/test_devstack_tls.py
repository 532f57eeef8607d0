"""The native stack's certificates and TLS listeners are what the TLS tests assume."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

from cryptography import x509

from devstack.certificates import Certificates
from devstack.native_kafka import OTHER_HOST, TLS_LISTENERS, NativeKafka, SaslCredentials


def _certificate(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificates(path.read_bytes())[0]


def test_the_server_certificate_names_localhost_and_127_0_0_1_only(tmp_path: Path) -> None:
    certificates = Certificates(tmp_path).ensure()
    server = _certificate(certificates.server_cert)
    names = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert server.issuer == _certificate(certificates.ca).subject
    assert server.issuer != _certificate(certificates.other_ca).subject
    assert server.not_valid_after_utc > datetime.datetime.now(datetime.UTC)


def test_the_expired_certificate_has_expired_and_keys_are_private(tmp_path: Path) -> None:
    certificates = Certificates(tmp_path).ensure()
    expired = x509.load_pem_x509_certificates(certificates.expired_server.read_bytes())[0]
    assert expired.not_valid_after_utc < datetime.datetime.now(datetime.UTC)
    for key in (certificates.server_key, certificates.client_key):
        assert key.read_text().startswith("-----BEGIN PRIVATE KEY-----")  # PKCS#8
        assert key.stat().st_mode & 0o077 == 0


def test_certificates_are_made_once(tmp_path: Path) -> None:
    first = Certificates(tmp_path).ensure().ca.read_bytes()
    assert Certificates(tmp_path).ensure().ca.read_bytes() == first


def test_every_tls_listener_is_configured_and_advertised(tmp_path: Path) -> None:
    kafka = NativeKafka(tmp_path / "kafka")
    kafka._write_properties(kafka._ports(allocate=True), SaslCredentials("u", "p"))
    lines = kafka.properties_file.read_text().splitlines()
    properties = dict(line.split("=", 1) for line in lines)
    protocols = dict(
        entry.split(":") for entry in properties["listener.security.protocol.map"].split(",")
    )
    for name, tls in TLS_LISTENERS.items():
        host, port = kafka.tls_bootstrap_servers(name).split(":")
        assert f"{name}://{host}:{port}" in properties["advertised.listeners"].split(",")
        assert protocols[name] == tls.protocol
        assert (host == OTHER_HOST) == name.endswith("_OTHER_HOST")
        asks = properties.get(f"listener.name.{name.lower()}.ssl.client.auth")
        assert (asks == "required") == name.startswith("MTLS")
    assert properties["ssl.client.auth"] == "none"


def test_a_broker_configured_by_older_code_is_known_to_need_a_restart(tmp_path: Path) -> None:
    kafka = NativeKafka(tmp_path / "kafka")
    kafka._write_properties(kafka._ports(allocate=True), kafka.sasl_credentials(create=True))
    assert kafka._configured()
    # The same broker asked for one more listener than its file has.
    assert not NativeKafka(tmp_path / "kafka", proxy_listener=True)._configured()
