"""SASL settings reach every Kafka client of the service, against a real authenticating
listener (the native broker's SASL_PLAINTEXT listener)."""

from __future__ import annotations

import asyncio
import os

import asyncpg
import pytest
from pydantic import SecretStr

from devstack.stack import Stack, native_kafka
from schemas.event import CustomerUpdatedEvent
from service.application.errors import AccessRefusedError
from service.bootstrap import WorkerProcess
from service.entrypoints.client import CommandSender, build_command
from service.infrastructure.settings import Settings
from tests.support import insert_customer, running_worker


@pytest.fixture
def sasl(stack: Stack, settings: Settings) -> Settings:
    if stack.kafka_source != "native":
        pytest.skip("the authenticating listener is part of the native stack only")
    broker = native_kafka(os.environ)
    credentials = broker.sasl_credentials()
    return settings.model_copy(
        update={
            "kafka_bootstrap_servers": broker.sasl_bootstrap_servers(),
            "kafka_security_protocol": "SASL_PLAINTEXT",
            "kafka_sasl_username": credentials.username,
            "kafka_sasl_password": SecretStr(credentials.password),
        }
    )


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
async def test_consumer_relay_admin_and_client_authenticate(
    sasl: Settings, db: asyncpg.Connection, mechanism: str
) -> None:
    secured = sasl.model_copy(update={"kafka_sasl_mechanism": mechanism})
    await insert_customer(db, "cus_sasl", invoice_prefix="SASL1")
    command = build_command(
        "cus_sasl", {"name": f"Over {mechanism}"}, source="tests", principal="svc-tests"
    )

    async with running_worker(secured), CommandSender(secured) as sender:
        outcome = await sender.send_and_wait(command, within=60)

    assert isinstance(outcome, CustomerUpdatedEvent)
    assert outcome.data.object.name == f"Over {mechanism}"


async def test_a_wrong_password_is_refused_by_the_broker(sasl: Settings) -> None:
    wrong = sasl.model_copy(
        update={"kafka_sasl_mechanism": "SCRAM-SHA-256", "kafka_sasl_password": SecretStr("nope")}
    )
    with pytest.raises(
        AccessRefusedError, match=rf"Kafka at {wrong.kafka_bootstrap_servers} refused"
    ):
        async with CommandSender(wrong):
            pass


async def test_a_worker_refused_by_the_broker_stops_at_once_instead_of_retrying(
    sasl: Settings,
) -> None:
    """A wrong password is permanent: waiting for Kafka as if it were away would hide it
    behind an endless ``waiting_for_kafka``."""
    wrong = sasl.model_copy(
        update={"kafka_sasl_mechanism": "SCRAM-SHA-256", "kafka_sasl_password": SecretStr("nope")}
    )
    with pytest.raises(ExceptionGroup) as raised:
        async with asyncio.timeout(60):
            await WorkerProcess(wrong).run(asyncio.Event())

    [error] = raised.value.exceptions
    assert isinstance(error, AccessRefusedError)
    assert "Authentication failed" in str(error)
