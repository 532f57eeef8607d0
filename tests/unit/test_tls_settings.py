"""Secrets from files, TLS settings checked at start, the database URL they make, and which
TLS failures count as permanent."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from devstack.certificates import Certificates
from service.adapters import tls
from service.adapters.kafka.clients import connection_options
from service.adapters.postgres.connection import database
from service.infrastructure.settings import Settings, SettingsError, load_settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return Certificates(tmp_path_factory.mktemp("tls")).ensure()


def _file(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_the_sasl_password_comes_from_its_file_without_the_trailing_newline(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, certificates: Certificates
) -> None:
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "svc")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD_FILE", str(_file(tmp_path, "pw", "s3cret\n")))
    monkeypatch.setenv("KAFKA_SSL_CAFILE", str(certificates.ca))

    settings = load_settings()

    assert connection_options(settings)["sasl_plain_password"] == "s3cret"
    # The file is read at each use: a rotated secret is seen by the next connection.
    (tmp_path / "pw").write_text("rotated")
    assert connection_options(settings)["sasl_plain_password"] == "rotated"
    # Handing the settings to a child process passes the file, not the secret.
    assert "s3cret" not in settings.environment().values()
    assert "rotated" not in repr(settings)


def test_the_database_password_comes_from_its_file_apart_from_the_url(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://svc@db.internal:5433/customers")
    monkeypatch.setenv("DATABASE_PASSWORD_FILE", str(_file(tmp_path, "pw", "pg-pass\r\n")))

    target = database(load_settings())

    assert "pg-pass" not in target.url
    options = target.options()
    assert options["dsn"] == target.url
    # A function asyncpg calls for each new connection: a rotated file is read.
    assert options["password"]() == "pg-pass"
    (tmp_path / "pw").write_text("rotated\n")
    assert options["password"]() == "rotated"
    assert target.endpoint == "db.internal:5433/customers"


@pytest.mark.parametrize(
    ("url", "endpoint"),
    [
        ("postgresql://svc:secret@db:5432/c", "db:5432/c"),
        ("postgresql://svc@db-1:5432,db-2:5432/c", "db-1:5432,db-2:5432/c"),
        ("postgresql://svc@[::1]:5433/c", "[::1]:5433/c"),
        ("postgresql:///c?host=/var/run/postgresql", "/var/run/postgresql/c"),
    ],
)
def test_the_endpoint_in_messages_never_carries_credentials_nor_fails(
    monkeypatch: pytest.MonkeyPatch, url: str, endpoint: str
) -> None:
    monkeypatch.setenv("DATABASE_URL", url)
    assert database(load_settings()).endpoint == endpoint


@pytest.mark.parametrize("secret", ["KAFKA_SASL_PASSWORD", "DATABASE_PASSWORD", "AUTH_JWT_KEY"])
def test_a_secret_and_its_file_together_are_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, secret: str
) -> None:
    monkeypatch.setenv(secret, "one")
    monkeypatch.setenv(f"{secret}_FILE", str(_file(tmp_path, "other", "two")))
    with pytest.raises(SettingsError, match=f"set {secret} or {secret}_FILE, not both"):
        load_settings()


@pytest.mark.parametrize(
    "variable",
    ["KAFKA_SASL_PASSWORD_FILE", "DATABASE_PASSWORD_FILE", "AUTH_JWT_KEY_FILE", "KAFKA_SSL_CAFILE"],
)
def test_a_missing_file_is_named_at_start(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, variable: str
) -> None:
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SSL")
    monkeypatch.setenv(variable, str(tmp_path / "not-mounted"))
    with pytest.raises(SettingsError, match=rf"{variable}: cannot read .*not-mounted"):
        load_settings()


def test_the_database_tls_settings_go_into_the_url_over_its_own(
    monkeypatch: pytest.MonkeyPatch, certificates: Certificates
) -> None:
    monkeypatch.setenv(
        "DATABASE_URL", "postgresql://svc@db:5432/c?sslmode=disable&application_name=cs"
    )
    monkeypatch.setenv("DATABASE_SSLMODE", "verify-full")
    monkeypatch.setenv("DATABASE_SSL_ROOT_CERT", str(certificates.ca))
    monkeypatch.setenv("DATABASE_SSL_CERT", str(certificates.client_cert))
    monkeypatch.setenv("DATABASE_SSL_KEY", str(certificates.client_key))

    url = database(load_settings()).url

    assert "sslmode=verify-full" in url
    assert "sslmode=disable" not in url
    assert "application_name=cs" in url
    for path in (certificates.ca, certificates.client_cert, certificates.client_key):
        assert str(path).replace("/", "%2F") in url


def test_the_urls_own_sslmode_counts_for_the_certificate_files(
    monkeypatch: pytest.MonkeyPatch, certificates: Certificates
) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://svc@db:5432/c?sslmode=verify-full")
    monkeypatch.setenv("DATABASE_SSL_ROOT_CERT", str(certificates.ca))
    assert "sslmode=verify-full" in database(load_settings()).url


def test_a_password_in_the_url_and_apart_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://svc:one@db:5432/c")
    monkeypatch.setenv("DATABASE_PASSWORD", "two")
    with pytest.raises(SettingsError, match="DATABASE_URL has a password"):
        load_settings()


def test_without_tls_settings_the_url_is_left_as_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://svc@db:5432/c?sslmode=require")
    assert database(load_settings()).url == "postgresql://svc@db:5432/c?sslmode=require"


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        (
            {"KAFKA_SSL_CAFILE": "ca"},
            "KAFKA_SECURITY_PROTOCOL is PLAINTEXT, which does not use TLS",
        ),
        ({"DATABASE_SSL_ROOT_CERT": "ca"}, "DATABASE_SSL_\\* files need DATABASE_SSLMODE"),
        (
            {"DATABASE_SSLMODE": "prefer", "DATABASE_SSL_ROOT_CERT": "ca"},
            "DATABASE_SSL_\\* files need DATABASE_SSLMODE",
        ),
        (
            {"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_KEYFILE": "key"},
            "KAFKA_SSL_KEYFILE needs KAFKA_SSL_CERTFILE",
        ),
        (
            {"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CAFILE": "not-pem"},
            "KAFKA_SSL_CAFILE: .* holds no usable CA",
        ),
        (
            {
                "KAFKA_SECURITY_PROTOCOL": "SSL",
                "KAFKA_SSL_CERTFILE": "cert",
                "KAFKA_SSL_KEYFILE": "other-key",
            },
            "KAFKA_SSL_CERTFILE: .* do not load as a certificate and an unencrypted private key",
        ),
        (
            {
                "DATABASE_SSLMODE": "verify-full",
                "DATABASE_SSL_CERT": "cert",
                "DATABASE_SSL_KEY": "ca",
            },
            "DATABASE_SSL_CERT: .* do not load",
        ),
    ],
)
def test_tls_settings_that_would_be_ignored_or_fail_later_are_refused_at_start(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    certificates: Certificates,
    variables: dict[str, str],
    message: str,
) -> None:
    files = {
        "ca": certificates.ca,
        "cert": certificates.client_cert,
        "key": certificates.client_key,
        "other-key": certificates.server_key,
        "not-pem": _file(tmp_path, "not.pem", "hello"),
    }
    for name, value in variables.items():
        monkeypatch.setenv(name, str(files.get(value, value)))
    with pytest.raises(SettingsError, match=message):
        load_settings()


def test_hostname_checks_are_on_unless_turned_off(
    monkeypatch: pytest.MonkeyPatch, certificates: Certificates
) -> None:
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SSL")
    monkeypatch.setenv("KAFKA_SSL_CAFILE", str(certificates.ca))
    context = connection_options(load_settings())["ssl_context"]
    assert (context.check_hostname, context.verify_mode) == (True, ssl.CERT_REQUIRED)


# -- which TLS failures are permanent ------------------------------------------------------


def _verify_error(code: int, message: str) -> ssl.SSLCertVerificationError:
    error = ssl.SSLCertVerificationError(1, f"certificate verify failed: {message}")
    error.verify_code = code
    error.verify_message = message
    return error


def _alert(reason: str) -> ssl.SSLError:
    error = ssl.SSLError(1, f"[SSL: {reason}]")
    error.reason = reason
    return error


@pytest.mark.parametrize(
    ("error", "words"),
    [
        (_verify_error(20, "unable to get local issuer certificate"), "unknown CA"),
        (_verify_error(19, "self-signed certificate in certificate chain"), "unknown CA"),
        (_verify_error(62, "Hostname mismatch"), "hostname mismatch"),
        (_verify_error(64, "IP address mismatch"), "hostname mismatch"),
        (_verify_error(10, "certificate has expired"), "expired"),
        (_verify_error(99, "something new"), "certificate verify failed: something new"),
        (_alert("TLSV13_ALERT_CERTIFICATE_REQUIRED"), "requires a client certificate"),
        (_alert("SSLV3_ALERT_BAD_CERTIFICATE"), "refused the client certificate"),
    ],
)
def test_certificate_problems_are_permanent_with_a_reason(error: Exception, words: str) -> None:
    reason = tls.refusal(error)
    assert reason is not None
    assert words in reason


def test_the_reason_is_found_behind_the_client_libraries_own_error() -> None:
    error = ConnectionError("Connection at 127.0.0.1:9093 closed")
    error.__cause__ = _alert("SSLV3_ALERT_BAD_CERTIFICATE")
    assert tls.refusal(error) == (
        "the server refused the client certificate (none was given, or it is not signed by "
        "a CA the server trusts) (SSLV3_ALERT_BAD_CERTIFICATE)"
    )


@pytest.mark.parametrize(
    "error",
    [
        ConnectionRefusedError(111, "Connection refused"),
        ConnectionResetError(104, "Connection reset by peer"),
        TimeoutError(),
        ssl.SSLEOFError(8, "EOF occurred in violation of protocol"),
        _alert("SOME_TRANSIENT_READ_ERROR"),
        # A plaintext answer: a wrong port, or a load balancer's error page in a failover.
        _alert("WRONG_VERSION_NUMBER"),
    ],
)
def test_a_server_that_is_away_or_drops_the_connection_stays_transient(error: Exception) -> None:
    assert tls.refusal(error) is None
