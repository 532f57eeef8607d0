"""Every setting of the service, read once from the environment (and an optional ``.env``).

Each field's environment variable is its name in upper case. Nothing else in the service
reads ``os.environ``. ``load_settings`` turns a validation failure into one message per
bad variable, naming it.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import parse_qsl, urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from schemas.topics import Topics
from service.domain.binary_mode import ContentMode
from service.domain.inbound import Limits
from service.infrastructure import failpoints

#: The settings that hold a secret; each may instead come from the file ``<NAME>_FILE``.
Secret = Literal["kafka_sasl_password", "database_password", "auth_jwt_key"]
SECRETS: tuple[Secret, ...] = ("kafka_sasl_password", "database_password", "auth_jwt_key")
#: The settings that name a file, checked readable when the settings load.
FILES = (
    *(f"{secret}_file" for secret in SECRETS),
    "kafka_ssl_cafile",
    "kafka_ssl_certfile",
    "kafka_ssl_keyfile",
    "database_ssl_root_cert",
    "database_ssl_cert",
    "database_ssl_key",
)


class SettingsError(ValueError):
    """One or more settings are invalid; the message names each variable."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", frozen=True
    )

    # -- Kafka connection --------------------------------------------------------------
    kafka_bootstrap_servers: Annotated[str, Field(min_length=1)] = "localhost:9092"
    kafka_client_id: str = "customer-service"
    kafka_consumer_group: str = "customer-service"
    #: How long the group coordinator waits for a silent worker before it gives the
    #: worker's partitions to the others (the broker bounds it: 6 s to 30 min by default).
    kafka_session_timeout_ms: Annotated[int, Field(ge=1_000, le=3_600_000)] = 10_000
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    #: A file holding the SASL password (a mounted Kubernetes or Docker secret), read
    #: when each Kafka client is made.
    kafka_sasl_password_file: Path | None = None
    kafka_ssl_cafile: Path | None = None
    kafka_ssl_certfile: Path | None = None
    kafka_ssl_keyfile: Path | None = None
    kafka_ssl_check_hostname: bool = True

    # -- Topics ------------------------------------------------------------------------
    topic_commands: str = "customer.update"
    topic_events: str = "customer.updated"
    topic_rejections: str = "customer.update.rejected"
    topic_dead_letters: str = "customer.update.dlq"
    topic_state: str = "customer.state"
    #: Publish every customer's state to the compacted ``TOPIC_STATE`` with each event
    #: (and let ``backfill`` publish it); off for deployments that do not want the topic.
    publish_state: bool = True
    topic_partitions: Annotated[int, Field(ge=1)] = 6
    topic_replication_factor: Annotated[int, Field(ge=1)] = 1

    # -- PostgreSQL --------------------------------------------------------------------
    database_url: SecretStr = SecretStr("postgresql://postgres@localhost:5432/customer_service")
    #: The password, apart from the URL (which may then leave it out); a ``_FILE`` too.
    database_password: SecretStr | None = None
    database_password_file: Path | None = None
    #: libpq's modes; unset, the URL's ``sslmode`` or else ``prefer``. Set, it wins.
    database_sslmode: (
        Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] | None
    ) = None
    database_ssl_root_cert: Path | None = None
    database_ssl_cert: Path | None = None
    database_ssl_key: Path | None = None
    database_pool_size: Annotated[int, Field(ge=2)] = 10
    database_command_timeout: Annotated[float, Field(gt=0)] = 30.0
    # PostgreSQL takes whole milliseconds up to 2^31 - 1.
    database_idle_in_transaction_timeout: Annotated[float, Field(ge=0, le=2_147_483)] = 30.0

    # -- Worker ------------------------------------------------------------------------
    batch_max_records: Annotated[int, Field(ge=1, le=10_000)] = 500
    batch_timeout: Annotated[float, Field(gt=0, le=240)] = 60.0
    max_record_bytes: Annotated[int, Field(ge=1024)] = Limits().max_record_bytes
    max_json_depth: Annotated[int, Field(ge=4, le=256)] = Limits().max_depth
    max_key_bytes: Annotated[int, Field(ge=64, le=65536)] = Limits().max_key_bytes
    max_headers: Annotated[int, Field(ge=1, le=1024)] = Limits().max_headers
    max_header_name_bytes: Annotated[int, Field(ge=16, le=4096)] = Limits().max_header_name_bytes
    max_header_value_bytes: Annotated[int, Field(ge=64, le=1_048_576)] = (
        Limits().max_header_value_bytes
    )
    idempotency_retention_days: Annotated[int, Field(ge=1)] = 7
    #: Days of idempotency rows per table. Each lookup reads every table within the
    #: retention, and a table is dropped once its last day is past it: wider tables mean
    #: fewer reads per command and rows kept up to that many days past the retention.
    idempotency_period_days: Annotated[int, Field(ge=1, le=366)] = 7
    retry_initial_delay: Annotated[float, Field(gt=0)] = 0.1
    retry_max_delay: Annotated[float, Field(gt=0)] = 30.0
    event_source: Annotated[str, Field(min_length=1)] = "customer-service"
    #: How events and rejections travel: one structured JSON value, or CloudEvents binary
    #: content mode (``ce_`` headers, the data alone in the value).
    event_content_mode: ContentMode = "structured"

    # -- Outbox relay ------------------------------------------------------------------
    relay_enabled: bool = True
    relay_batch_size: Annotated[int, Field(ge=1, le=50_000)] = 2000
    relay_idle_interval: Annotated[float, Field(gt=0)] = 1.0
    relay_transactional_id: Annotated[str, Field(min_length=1)] = "customer-service-relay"
    relay_drain_timeout: Annotated[float, Field(ge=0)] = 30.0
    relay_stall_seconds: Annotated[float, Field(gt=0)] = 60.0
    relay_takeover_seconds: Annotated[float, Field(ge=1, le=3600)] = 15.0

    # -- Authorization -----------------------------------------------------------------
    auth_jwt_key: SecretStr | None = None
    auth_jwt_key_file: Path | None = None
    auth_jwt_algorithms: Annotated[list[str], NoDecode] = ["RS256"]
    auth_jwt_audience: str | None = None
    auth_jwt_issuer: str | None = None

    # -- Health and metrics over HTTP --------------------------------------------------
    http_enabled: bool = True
    http_host: str = "0.0.0.0"
    http_port: Annotated[int, Field(ge=0, le=65535)] = 8080

    # -- Tracing (OpenTelemetry) -------------------------------------------------------
    tracing_enabled: bool = False
    tracing_otlp_endpoint: str = "http://localhost:4318/v1/traces"
    tracing_service_name: str = "customer-service"

    # -- Testing only ------------------------------------------------------------------
    #: Crash on purpose at named points, for the fault-injection suite (service/failpoints).
    failpoints: str = ""

    # -- Logs --------------------------------------------------------------------------
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @model_validator(mode="before")
    @classmethod
    def _split_algorithms(cls, values: dict[str, object]) -> dict[str, object]:
        algorithms = values.get("auth_jwt_algorithms")
        if isinstance(algorithms, str):
            values["auth_jwt_algorithms"] = [
                item.strip() for item in algorithms.split(",") if item.strip()
            ]
        return values

    @field_validator("database_idle_in_transaction_timeout")
    @classmethod
    def _whole_milliseconds(cls, value: float) -> float:
        # Below a millisecond the server would read 0, which turns the timeout off.
        if 0 < value < 0.001:
            raise ValueError("must be 0 (off) or at least 0.001 seconds")
        return value

    @field_validator("failpoints")
    @classmethod
    def _known_failpoints(cls, value: str) -> str:
        failpoints.parse(value)
        return value

    @field_validator(*FILES)
    @classmethod
    def _readable(cls, path: Path | None) -> Path | None:
        # At start, so that a missing mount is a named setting, not a failure at first use.
        if path is not None:
            check_readable(path)
        return path

    @model_validator(mode="after")
    def _certificates_load(self) -> Settings:
        check_certificates(self)
        return self

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.kafka_security_protocol.startswith("SASL_"):
            if self.kafka_sasl_mechanism is None:
                raise ValueError(
                    "KAFKA_SASL_MECHANISM is required when KAFKA_SECURITY_PROTOCOL is "
                    f"{self.kafka_security_protocol}"
                )
            if self.kafka_sasl_username is None or (
                self.kafka_sasl_password is None and self.kafka_sasl_password_file is None
            ):
                raise ValueError(
                    "KAFKA_SASL_USERNAME and KAFKA_SASL_PASSWORD (or KAFKA_SASL_PASSWORD_FILE) "
                    "are required with SASL"
                )
        for secret in SECRETS:
            if getattr(self, secret) is not None and getattr(self, f"{secret}_file") is not None:
                raise ValueError(f"set {secret.upper()} or {secret.upper()}_FILE, not both")
        tls_files = ("kafka_ssl_cafile", "kafka_ssl_certfile", "kafka_ssl_keyfile")
        if not self.kafka_security_protocol.endswith("SSL") and any(
            getattr(self, name) is not None for name in tls_files
        ):
            # Files that would be ignored: whoever set them believes the connection is TLS.
            raise ValueError(
                f"KAFKA_SSL_* files are set but KAFKA_SECURITY_PROTOCOL is "
                f"{self.kafka_security_protocol}, which does not use TLS (SSL or SASL_SSL does)"
            )
        database_files = ("database_ssl_root_cert", "database_ssl_cert", "database_ssl_key")
        url = urlsplit(self.database_url.get_secret_value())
        sslmode = self.database_sslmode or dict(parse_qsl(url.query)).get("sslmode")
        if sslmode not in ("require", "verify-ca", "verify-full") and any(
            getattr(self, name) is not None for name in database_files
        ):
            raise ValueError(
                "DATABASE_SSL_* files need DATABASE_SSLMODE (or the URL's sslmode) require, "
                "verify-ca or verify-full (with prefer or allow no certificate is checked)"
            )
        if url.password and (self.database_password or self.database_password_file):
            raise ValueError(
                "DATABASE_URL has a password and DATABASE_PASSWORD(_FILE) is set: keep one"
            )
        if self.kafka_ssl_keyfile is not None and self.kafka_ssl_certfile is None:
            raise ValueError("KAFKA_SSL_KEYFILE needs KAFKA_SSL_CERTFILE")
        if self.database_ssl_key is not None and self.database_ssl_cert is None:
            raise ValueError("DATABASE_SSL_KEY needs DATABASE_SSL_CERT")
        if self.retry_max_delay < self.retry_initial_delay:
            raise ValueError("RETRY_MAX_DELAY must not be below RETRY_INITIAL_DELAY")
        return self

    @property
    def topics(self) -> Topics:
        return Topics(
            commands=self.topic_commands,
            events=self.topic_events,
            rejections=self.topic_rejections,
            dead_letters=self.topic_dead_letters,
            state=self.topic_state,
        )

    @property
    def limits(self) -> Limits:
        return Limits(
            max_record_bytes=self.max_record_bytes,
            max_depth=self.max_json_depth,
            max_key_bytes=self.max_key_bytes,
            max_headers=self.max_headers,
            max_header_name_bytes=self.max_header_name_bytes,
            max_header_value_bytes=self.max_header_value_bytes,
        )

    def environment(self) -> dict[str, str]:
        """The variables that give a child process these settings (those set explicitly,
        secrets included): for running ``customer-service`` as a subprocess."""
        variables = {}
        for name in sorted(self.model_fields_set):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            elif isinstance(value, list):
                value = ",".join(value)
            elif isinstance(value, bool):
                value = str(value).lower()
            variables[name.upper()] = str(value)
        return variables

    def secret(self, name: Secret) -> str | None:
        """The secret ``name``: its variable's value, else the content of its ``_FILE``
        (read now, so a rotated file is picked up; a password loses its trailing newline,
        which ``echo`` and most editors add)."""
        value: SecretStr | None = getattr(self, name)
        if value is not None:
            return value.get_secret_value()
        path: Path | None = getattr(self, f"{name}_file")
        if path is None:
            return None
        text = path.read_text()
        return text if name == "auth_jwt_key" else text.rstrip("\r\n")


def check_readable(path: Path) -> None:
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise ValueError(f"cannot read {path}: {exc.strerror}") from None


def check_certificates(settings: Settings) -> None:
    """Each CA file and certificate/key pair loads into a TLS context: a file that is not
    PEM, or a key that does not match its certificate, fails here by name instead of as a
    handshake error later."""
    for variable, cafile in (
        ("KAFKA_SSL_CAFILE", settings.kafka_ssl_cafile),
        ("DATABASE_SSL_ROOT_CERT", settings.database_ssl_root_cert),
    ):
        if cafile is not None:
            try:
                ssl.create_default_context(cafile=str(cafile))
            except ssl.SSLError as exc:
                raise ValueError(f"{variable}: {cafile} holds no usable CA ({exc})") from None
    for variable, cert, key in (
        ("KAFKA_SSL_CERTFILE", settings.kafka_ssl_certfile, settings.kafka_ssl_keyfile),
        ("DATABASE_SSL_CERT", settings.database_ssl_cert, settings.database_ssl_key),
    ):
        if cert is not None:
            try:
                # An empty password: an encrypted key fails here rather than prompting.
                ssl.create_default_context().load_cert_chain(
                    str(cert), str(key) if key else None, password=""
                )
            except ssl.SSLError as exc:
                raise ValueError(
                    f"{variable}: {cert} and its key do not load as a certificate and an "
                    f"unencrypted private key that match ({exc.reason or exc})"
                ) from None


def load_settings(**overrides: object) -> Settings:
    """Read the settings; raise ``SettingsError`` naming every invalid variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = []
        for error in exc.errors(include_url=False):
            name = "_".join(str(part) for part in error["loc"][:1]).upper()
            message = error["msg"].removeprefix("Value error, ")
            problems.append(f"{name}: {message}" if name else message)
        raise SettingsError("invalid settings:\n  " + "\n  ".join(problems)) from None
