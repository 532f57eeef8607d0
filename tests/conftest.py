"""Fixtures shared by every test.

Integration and end-to-end tests get a real Kafka and a real PostgreSQL from
``devstack.open_stack``: endpoints from the environment if given, else containers where
Docker answers, else the native services (started here and stopped at the end if this
session started them). Each test gets its own database (cloned from a migrated
template) and its own topics and consumer group, so tests never see each other's data.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from devstack.kcat import kcat_path
from devstack.stack import Stack, open_stack
from devstack.stack import home as devstack_home
from service.adapters.kafka.clients import create_topics
from service.adapters.postgres.migrations import migrate
from service.infrastructure.settings import Settings
from tests.support import database_url_for

TESTS = Path(__file__).parent
TEST_PARTITIONS = 3


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        kind = Path(str(item.fspath)).relative_to(TESTS).parts[0]
        if kind in ("integration", "e2e"):
            item.add_marker(getattr(pytest.mark, kind))


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    opened = open_stack(os.environ)
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture(scope="session")
def kcat() -> Path:
    """Debian's kcat (librdkafka), for records our own client cannot produce: $KCAT, else
    on PATH, else unpacked under .devstack/kcat on first use (see devstack/kcat.py)."""
    return kcat_path(devstack_home())


@pytest.fixture(scope="session")
async def template_database(stack: Stack) -> AsyncIterator[str]:
    """A database with every migration applied, to clone per test."""
    name = f"cs_template_{uuid.uuid4().hex[:8]}"
    admin = await asyncpg.connect(stack.database_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        template = await asyncpg.connect(database_url_for(stack.database_url, name))
        try:
            await migrate(template)
        finally:
            await template.close()
        yield name
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def database_url(stack: Stack, template_database: str) -> AsyncIterator[str]:
    name = f"cs_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(stack.database_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"')
        yield database_url_for(stack.database_url, name)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A connection to this test's database, for arranging and asserting."""
    connection = await asyncpg.connect(database_url)
    try:
        yield connection
    finally:
        await connection.close()


@pytest.fixture
async def settings(stack: Stack, database_url: str) -> Settings:
    """Settings for this test: its own database, topics and consumer group."""
    suffix = uuid.uuid4().hex[:10]
    configured = Settings(
        kafka_bootstrap_servers=stack.kafka_bootstrap_servers,
        database_url=database_url,
        kafka_consumer_group=f"cs-test-{suffix}",
        topic_commands=f"customer.update.{suffix}",
        topic_events=f"customer.updated.{suffix}",
        topic_rejections=f"customer.update.rejected.{suffix}",
        topic_dead_letters=f"customer.update.dlq.{suffix}",
        topic_state=f"customer.state.{suffix}",
        relay_transactional_id=f"cs-test-relay-{suffix}",
        retry_initial_delay=0.05,
        retry_max_delay=0.5,
        relay_idle_interval=0.2,
        http_port=0,
        log_format="console",
        _env_file=None,
    )
    await create_topics(configured, partitions=TEST_PARTITIONS)
    return configured
