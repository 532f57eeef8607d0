"""docker-compose.yml agrees with the code: images, settings, topics and health wiring.

Docker cannot run where the suite runs, so these checks stand in for `docker compose up`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from devstack.containers import KAFKA_IMAGE, POSTGRES_IMAGE
from service.infrastructure.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
APP_SERVICES = ("create-topics", "migrate", "seed", "backfill", "worker", "relay")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


def services(compose: dict[str, Any]) -> dict[str, Any]:
    found: dict[str, Any] = compose["services"]
    return found


def test_the_images_are_the_ones_the_tests_run(compose: dict[str, Any]) -> None:
    assert services(compose)["kafka"]["image"] == KAFKA_IMAGE
    assert services(compose)["postgres"]["image"] == POSTGRES_IMAGE


def test_the_native_broker_is_the_same_kafka_version(compose: dict[str, Any]) -> None:
    pom = (ROOT / "devstack" / "kafka" / "pom.xml").read_text()
    match = re.search(r"<kafka.version>([^<]+)</kafka.version>", pom)
    assert match is not None
    assert services(compose)["kafka"]["image"].endswith(":" + match[1])


@pytest.mark.parametrize("name", APP_SERVICES)
def test_every_variable_given_to_the_service_is_a_setting(
    compose: dict[str, Any], name: str
) -> None:
    known = {field.upper() for field in Settings.model_fields}
    given = set(services(compose)[name]["environment"])
    assert given <= known, f"{name} sets unknown variables {sorted(given - known)}"


def test_the_service_reaches_kafka_on_an_advertised_listener(compose: dict[str, Any]) -> None:
    advertised = services(compose)["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    bootstrap = services(compose)["worker"]["environment"]["KAFKA_BOOTSTRAP_SERVERS"]
    assert f"//{bootstrap}" in advertised


def test_the_service_uses_the_database_postgres_creates(compose: dict[str, Any]) -> None:
    postgres = services(compose)["postgres"]["environment"]
    url = services(compose)["worker"]["environment"]["DATABASE_URL"]
    assert (
        url == f"postgresql://{postgres['POSTGRES_USER']}@postgres:5432/{postgres['POSTGRES_DB']}"
    )


def test_every_app_service_shares_one_environment(compose: dict[str, Any]) -> None:
    # The worker's differs in one setting: the relay runs in a container of its own.
    environments = [
        {k: v for k, v in services(compose)[name]["environment"].items() if k != "RELAY_ENABLED"}
        for name in APP_SERVICES
    ]
    assert all(env == environments[0] for env in environments)


def test_one_relay_runs_in_a_container_of_its_own(compose: dict[str, Any]) -> None:
    worker, relay = services(compose)["worker"], services(compose)["relay"]
    assert worker["environment"]["RELAY_ENABLED"] == "false"
    assert relay["command"] == ["relay"]
    assert "RELAY_ENABLED" not in relay["environment"]
    assert Settings.model_fields["relay_enabled"].default is True
    assert relay["depends_on"] == {
        name: condition for name, condition in worker["depends_on"].items() if name != "relay"
    }
    assert relay["healthcheck"] == worker["healthcheck"]
    # Its own host port: both serve HTTP_PORT inside their containers.
    port = relay["environment"]["HTTP_PORT"]
    assert relay["ports"] == [f"8082:{port}"]
    assert not set(relay["ports"]) & set(worker["ports"])
    # Time for the drain of the outbox and the last Kafka commit (30 s) before a SIGKILL.
    grace = int(relay["stop_grace_period"].removesuffix("s"))
    assert grace > Settings.model_fields["relay_drain_timeout"].default + 30


def test_the_worker_starts_after_topics_and_migrations_and_is_probed(
    compose: dict[str, Any],
) -> None:
    worker = services(compose)["worker"]
    assert worker["depends_on"] == {
        "create-topics": {"condition": "service_completed_successfully"},
        "migrate": {"condition": "service_completed_successfully"},
        # Started with it, and stopped after it so that it drains the last batch.
        "relay": {"condition": "service_started"},
    }
    port = worker["environment"]["HTTP_PORT"]
    assert f"{port}:{port}" in worker["ports"]
    assert f"127.0.0.1:{port}/readyz" in " ".join(worker["healthcheck"]["test"])
    assert worker["command"] == ["worker"]


def test_one_shot_steps_wait_for_healthy_services(compose: dict[str, Any]) -> None:
    all_services = services(compose)
    assert "healthcheck" in all_services["kafka"]
    assert "healthcheck" in all_services["postgres"]
    assert all_services["create-topics"]["depends_on"] == {
        "kafka": {"condition": "service_healthy"}
    }
    assert all_services["create-topics"]["command"] == ["create-topics"]
    assert all_services["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    assert all_services["seed"]["depends_on"] == {
        "migrate": {"condition": "service_completed_successfully"}
    }
    # The seeded customers' states, once they exist.
    assert all_services["backfill"]["depends_on"] == {
        "seed": {"condition": "service_completed_successfully"}
    }
    assert all_services["backfill"]["command"] == ["backfill", "--all"]


def test_topics_are_created_with_an_explicit_partition_count(compose: dict[str, Any]) -> None:
    env = services(compose)["create-topics"]["environment"]
    assert int(env["TOPIC_PARTITIONS"]) >= 1


def test_the_kafka_ui_is_optional(compose: dict[str, Any]) -> None:
    ui = services(compose)["kafka-ui"]
    assert ui["profiles"] == ["ui"]
    assert ui["environment"]["KAFKA_CLUSTERS_0_BOOTSTRAPSERVERS"] == "kafka:9092"
