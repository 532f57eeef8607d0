"""Settings: read from the environment, invalid ones named at start."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from service.adapters.kafka.clients import command_consumer, connection_options
from service.infrastructure.settings import Settings, SettingsError, load_settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in Settings.model_fields:
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.chdir(tmp_path)  # no stray .env


def test_each_setting_is_read_from_its_upper_case_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_BOOTSTRAP_SERVERS", "broker-1:9092,broker-2:9092")
    monkeypatch.setenv("BATCH_MAX_RECORDS", "250")
    monkeypatch.setenv("TOPIC_EVENTS", "crm.customer.updated")
    monkeypatch.setenv("AUTH_JWT_ALGORITHMS", "RS256, ES256")

    settings = load_settings()

    assert settings.kafka_bootstrap_servers == "broker-1:9092,broker-2:9092"
    assert settings.batch_max_records == 250
    assert settings.topics.events == "crm.customer.updated"
    assert settings.auth_jwt_algorithms == ["RS256", "ES256"]


def test_a_dotenv_file_is_read(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("KAFKA_CONSUMER_GROUP=from-dotenv\n")
    assert load_settings().kafka_consumer_group == "from-dotenv"


@pytest.mark.parametrize(
    ("variable", "value", "named"),
    [
        ("BATCH_MAX_RECORDS", "lots", "BATCH_MAX_RECORDS"),
        ("BATCH_MAX_RECORDS", "0", "BATCH_MAX_RECORDS"),
        ("KAFKA_SECURITY_PROTOCOL", "SASL_TLS", "KAFKA_SECURITY_PROTOCOL"),
        ("LOG_FORMAT", "xml", "LOG_FORMAT"),
        ("HTTP_PORT", "70000", "HTTP_PORT"),
        ("FAILPOINTS", "somewhere", "FAILPOINTS"),
        ("DATABASE_POOL_SIZE", "1", "DATABASE_POOL_SIZE"),
        ("DATABASE_IDLE_IN_TRANSACTION_TIMEOUT", "-1", "DATABASE_IDLE_IN_TRANSACTION_TIMEOUT"),
        ("DATABASE_IDLE_IN_TRANSACTION_TIMEOUT", "0.0001", "DATABASE_IDLE_IN_TRANSACTION_TIMEOUT"),
        ("DATABASE_IDLE_IN_TRANSACTION_TIMEOUT", "3e6", "DATABASE_IDLE_IN_TRANSACTION_TIMEOUT"),
        ("DATABASE_IDLE_IN_TRANSACTION_TIMEOUT", "nan", "DATABASE_IDLE_IN_TRANSACTION_TIMEOUT"),
    ],
)
def test_an_invalid_setting_fails_naming_its_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, named: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError, match=named):
        load_settings()


def test_sasl_needs_a_mechanism_and_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    with pytest.raises(SettingsError, match="KAFKA_SASL_MECHANISM"):
        load_settings()
    monkeypatch.setenv("KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    with pytest.raises(SettingsError, match="KAFKA_SASL_USERNAME"):
        load_settings()


def test_secrets_do_not_show_in_the_settings_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "hunter2")
    monkeypatch.setenv("DATABASE_URL", "postgresql://app:s3cret@db/customers")
    shown = repr(load_settings())
    assert "hunter2" not in shown
    assert "s3cret" not in shown


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_sasl_settings_reach_every_kafka_client(
    monkeypatch: pytest.MonkeyPatch, mechanism: str
) -> None:
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("KAFKA_SASL_MECHANISM", mechanism)
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "svc")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", "pw")

    options = connection_options(load_settings())

    assert options["security_protocol"] == "SASL_PLAINTEXT"
    assert options["sasl_mechanism"] == mechanism
    assert (options["sasl_plain_username"], options["sasl_plain_password"]) == ("svc", "pw")
    assert "ssl_context" not in options


def test_tls_settings_build_a_verifying_context(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SSL")
    monkeypatch.setenv("KAFKA_CLIENT_ID", "cs-eu-1")

    options = connection_options(load_settings())

    assert options["security_protocol"] == "SSL"
    assert options["client_id"] == "cs-eu-1"
    context = options["ssl_context"]
    assert isinstance(context, ssl.SSLContext)
    assert context.check_hostname is True
    assert context.verify_mode == ssl.CERT_REQUIRED


async def test_the_session_timeout_reaches_the_consumer_with_heartbeats_a_third_of_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KAFKA_SESSION_TIMEOUT_MS", "6000")
    consumer = command_consumer(load_settings())
    try:
        coordinator_options = (consumer._session_timeout_ms, consumer._heartbeat_interval_ms)
    finally:
        await consumer.stop()  # never started: nothing was connected
    assert coordinator_options == (6000, 2000)
