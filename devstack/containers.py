"""Kafka and PostgreSQL in containers (testcontainers), for machines with a Docker engine.

The images are the ones docker-compose.yml runs, so tests and the compose stack agree.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from devstack import processes
from devstack.native_kafka import metadata_available

KAFKA_IMAGE = "apache/kafka:4.1.1"
POSTGRES_IMAGE = "postgres:18"
DEFAULT_SOCKET = "/var/run/docker.sock"


def docker_available() -> bool:
    """True when a Docker engine answers a ping within a few seconds."""
    host = os.environ.get("DOCKER_HOST")
    if host is None and not Path(DEFAULT_SOCKET).exists():
        # Checked first: the Docker client leaks a socket when the default one is absent.
        return False
    try:
        import docker
    except ImportError:
        return False
    try:
        client = docker.from_env(timeout=3)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        # Any failure to reach an engine (refused, no permission, timeout) means "absent".
        return False


class KafkaContainer:
    """A single-node KRaft broker from the official ``apache/kafka`` image."""

    def __init__(self) -> None:
        from testcontainers.core.container import DockerContainer

        # The broker advertises the host port clients use, so that port is chosen before
        # the container starts and bound explicitly.
        self.host_port = processes.free_port()
        self._container: Any = (
            DockerContainer(KAFKA_IMAGE)
            .with_bind_ports(9092, self.host_port)
            .with_envs(
                KAFKA_NODE_ID="1",
                KAFKA_PROCESS_ROLES="broker,controller",
                KAFKA_LISTENERS="PLAINTEXT://0.0.0.0:9092,CONTROLLER://localhost:9093",
                KAFKA_ADVERTISED_LISTENERS=f"PLAINTEXT://127.0.0.1:{self.host_port}",
                KAFKA_CONTROLLER_LISTENER_NAMES="CONTROLLER",
                KAFKA_LISTENER_SECURITY_PROTOCOL_MAP="PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                KAFKA_CONTROLLER_QUORUM_VOTERS="1@localhost:9093",
                KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR="1",
                KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR="1",
                KAFKA_TRANSACTION_STATE_LOG_MIN_ISR="1",
                KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS="0",
                KAFKA_AUTO_CREATE_TOPICS_ENABLE="false",
            )
        )

    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.host_port}"

    def start(self) -> None:
        self._container.start()
        processes.wait_until(
            lambda: asyncio.run(metadata_available(self.bootstrap_servers())),
            timeout=120,
            interval=0.5,
            what=f"Kafka container at {self.bootstrap_servers()}",
        )

    def stop(self) -> None:
        self._container.stop()


class PostgresContainer:
    def __init__(self) -> None:
        from testcontainers.postgres import PostgresContainer as _Postgres

        self._container: Any = _Postgres(
            POSTGRES_IMAGE,
            username="postgres",
            password="postgres",
            dbname="customer_service",
            driver=None,
        )

    def url(self) -> str:
        url: str = self._container.get_connection_url()
        return url

    def start(self) -> None:
        self._container.start()

    def stop(self) -> None:
        self._container.stop()
