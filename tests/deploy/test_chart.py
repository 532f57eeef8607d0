"""The Helm chart, rendered by a real ``helm template`` (built from the Go module proxy by
``devstack/helm.py``): every object valid for Kubernetes, and for KEDA and the Prometheus
operator (their published CRDs), with the default values and with every option on; the
settings it passes are the ones the service reads, and its probes name what it serves."""

from __future__ import annotations

import json
import os
import re
import subprocess
import typing
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import kubernetes_validate
import pytest
import yaml
from pydantic import SecretStr

from deploy.grafana import dashboard
from devstack.crds import Schemas, crd_schemas, unknown_fields
from devstack.helm import helm_path
from devstack.stack import home as devstack_home
from service.adapters.http import Health, build_app
from service.infrastructure import settings as settings_module
from service.infrastructure.metrics import Metrics
from service.infrastructure.settings import Settings

ROOT = Path(__file__).parents[2]
CHART = ROOT / "deploy" / "helm" / "customer-service"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yaml"
#: The oldest Kubernetes the chart supports (Chart.yaml's kubeVersion) and the newest
#: kubernetes-validate knows.
KUBERNETES = ("1.27.0", kubernetes_validate.latest_version())
#: Settings that are secrets, and so come from the Secret, never from values.
SECRETS = {
    name.upper()
    for name, field in Settings.model_fields.items()
    if SecretStr in (field.annotation, *typing.get_args(field.annotation))
}
#: Settings a deployment never sets: crashing on purpose is for the fault suite.
NOT_DEPLOYED = {"FAILPOINTS"}
#: Where the chart's value differs from the service's default, and why.
CHART_DEFAULTS = {"LOG_FORMAT": "json"}  # no terminal in a pod: "auto" would pick json too

#: Every option on, and settings far from their defaults.
EVERYTHING: dict[str, Any] = {
    "secret": {
        "create": True,
        "data": {"DATABASE_URL": "postgresql://cs@db/cs", "KAFKA_SASL_PASSWORD": "not-a-secret"},
    },
    "settings": {
        "KAFKA_BOOTSTRAP_SERVERS": "kafka-0.kafka:9093,kafka-1.kafka:9093",
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "KAFKA_SASL_USERNAME": "customer-service",
        "KAFKA_SSL_CAFILE": "/etc/customer-service/kafka/ca.crt",
        "TOPIC_PARTITIONS": 12,
        "MAX_HEADER_VALUE_BYTES": 1048576,
        "HTTP_PORT": 9100,
        "BATCH_TIMEOUT": 90.5,
    },
    "worker": {"processes": 4, "terminationGracePeriodSeconds": 200},
    "relay": {"enabled": True},
    "migrate": {"createTopics": True},
    "autoscaling": {"enabled": True, "lagThreshold": 5000, "authenticationRef": "kafka-sasl"},
    "serviceMonitor": {"enabled": True},
    "prometheusRule": {"enabled": True, "runbookBaseUrl": "https://docs.example/cs/"},
    "dashboard": {"enabled": True},
    "networkPolicy": {
        "enabled": True,
        "kafka": {"ports": [9093], "to": [{"ipBlock": {"cidr": "10.0.0.0/16"}}]},
        "metricsFrom": [{"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}],
    },
    "extraVolumes": [{"name": "kafka-ca", "secret": {"secretName": "kafka-ca"}}],
    "extraVolumeMounts": [{"name": "kafka-ca", "mountPath": "/etc/customer-service/kafka"}],
}
MINIMAL: dict[str, Any] = {"secret": {"existingSecret": "customer-service"}}


@pytest.fixture(scope="session")
def helm() -> Path:
    return helm_path(devstack_home())


@pytest.fixture(scope="session")
def schemas() -> Schemas:
    return crd_schemas()


class RenderError(Exception):
    pass


def render(helm: Path, tmp_path: Path, values: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The objects ``helm template`` makes of the chart with ``values``."""
    given = tmp_path / f"values-{len(list(tmp_path.iterdir()))}.yaml"
    given.write_text(yaml.safe_dump(dict(values)))
    result = subprocess.run(
        [str(helm), "template", "cs", str(CHART), "--namespace", "payments", "-f", str(given)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "HELM_CACHE_HOME": str(tmp_path / "cache")},
    )
    if result.returncode != 0:
        raise RenderError(result.stderr)
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def merged(*layers: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for layer in layers:
        for key, value in layer.items():
            if isinstance(value, Mapping) and isinstance(out.get(key), dict):
                out[key] = merged(out[key], value)
            else:
                out[key] = value
    return out


def one(objects: list[dict[str, Any]], kind: str, suffix: str = "") -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"].endswith(suffix)]
    assert len(found) == 1, f"{len(found)} {kind} named *{suffix}"
    return found[0]


def containers(objects: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for obj in objects:
        if obj["kind"] in ("Deployment", "Job"):
            spec = obj["spec"]["template"]["spec"]
            yield from spec.get("initContainers", [])
            yield from spec["containers"]


def validate(objects: list[dict[str, Any]], schemas: Schemas) -> None:
    for obj in objects:
        key = (obj["apiVersion"], obj["kind"])
        if key in schemas:
            # Not jsonschema.validate: that checks the schema first, and Python's re
            # refuses the Go regular expressions some CRDs hold in fields not used here.
            jsonschema.Draft4Validator(schemas[key]).validate(obj)
            assert unknown_fields(obj, schemas[key]) == [], key
        else:
            for version in KUBERNETES:
                kubernetes_validate.validate(obj, version, strict=True)


def test_the_default_values_render_the_workers_and_their_migration(
    helm: Path, tmp_path: Path, schemas: Schemas
) -> None:
    objects = render(helm, tmp_path, MINIMAL)
    validate(objects, schemas)
    assert sorted(o["kind"] for o in objects) == [
        "Deployment",
        "Deployment",
        "Job",
        "PodDisruptionBudget",
        "PodDisruptionBudget",
        "Service",
        "ServiceAccount",
    ]
    worker = one(objects, "Deployment", "-worker")
    assert worker["spec"]["replicas"] == 2
    # The relay runs apart by default, so the workers run none.
    assert one(objects, "Deployment", "-relay")["spec"]["replicas"] == 2
    container = worker["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "RELAY_ENABLED", "value": "false"} in container["env"]
    migrate = one(objects, "Job", "-migrate")
    assert migrate["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    assert migrate["spec"]["template"]["spec"]["containers"][0]["args"] == ["migrate"]


def test_every_option_on_renders_valid_objects(
    helm: Path, tmp_path: Path, schemas: Schemas
) -> None:
    objects = render(helm, tmp_path, EVERYTHING)
    validate(objects, schemas)
    kinds = {o["kind"] for o in objects}
    assert {"ScaledObject", "ServiceMonitor", "PrometheusRule", "NetworkPolicy"} <= kinds
    assert {"Secret", "ConfigMap"} <= kinds


def test_an_unknown_field_of_a_custom_resource_is_found(schemas: Schemas) -> None:
    # The check above would pass on anything if unknown_fields never found one.
    scaled = {
        "apiVersion": "keda.sh/v1alpha1",
        "kind": "ScaledObject",
        "metadata": {"name": "x"},
        "spec": {"scaleTargetRef": {"name": "x"}, "maxReplicas": 3, "triggers": []},
    }
    assert unknown_fields(scaled, schemas[("keda.sh/v1alpha1", "ScaledObject")]) == [
        "spec.maxReplicas"
    ]


def test_the_values_hold_every_setting_with_the_services_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())["settings"]
    every = {name.upper() for name in Settings.model_fields}
    assert set(values) == every - SECRETS - NOT_DEPLOYED
    for name in every:
        monkeypatch.delenv(name, raising=False)
    defaults = Settings(_env_file=None)
    for name, value in values.items():
        if value is not None:
            monkeypatch.setenv(name, str(value).lower() if isinstance(value, bool) else str(value))
    from_chart = Settings(_env_file=None)
    differences = {
        name.upper(): getattr(from_chart, name)
        for name in Settings.model_fields
        if getattr(from_chart, name) != getattr(defaults, name)
    }
    assert differences == CHART_DEFAULTS


@pytest.mark.parametrize("values", [MINIMAL, EVERYTHING], ids=["default", "everything"])
def test_every_variable_the_chart_sets_is_a_setting_the_service_reads(
    helm: Path, tmp_path: Path, values: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The files the values name are mounted in the pods, not here.
    monkeypatch.setattr(settings_module, "check_readable", lambda _path: None)
    monkeypatch.setattr(settings_module, "check_certificates", lambda _settings: None)
    objects = render(helm, tmp_path, values)
    settings = {name.upper() for name in Settings.model_fields}
    names = {variable["name"] for c in containers(objects) for variable in c.get("env", [])}
    assert names, "no container sets a variable"
    assert names <= settings - SECRETS, names - (settings - SECRETS)
    for secret in (o for o in objects if o["kind"] == "Secret"):
        assert set(secret["stringData"]) <= SECRETS
    # What those variables and the Secret give is what the values say, every setting.
    secret = values["secret"].get("data", {})
    given = merged(
        yaml.safe_load((CHART / "values.yaml").read_text())["settings"],
        values.get("settings", {}),
        secret,
    )
    expected = Settings.model_validate(
        {k.lower(): v for k, v in given.items() if v is not None and k != "RELAY_ENABLED"}
    )
    for container in containers(objects):
        env = {**{v["name"]: v["value"] for v in container["env"]}, **secret}
        loaded = Settings.model_validate({k.lower(): v for k, v in env.items()})
        for name in Settings.model_fields:
            if name != "relay_enabled":
                assert getattr(loaded, name) == getattr(expected, name), name


def test_the_probes_and_ports_are_what_the_service_serves(helm: Path, tmp_path: Path) -> None:
    objects = render(helm, tmp_path, EVERYTHING)
    app = build_app(Health(pool=None, stuck_after=1.0), Metrics())
    routes = {resource.canonical for resource in app.router.resources()}
    port = EVERYTHING["settings"]["HTTP_PORT"]
    for deployment in (o for o in objects if o["kind"] == "Deployment"):
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert {"name": "http", "containerPort": port, "protocol": "TCP"} in container["ports"]
        env = {v["name"]: v["value"] for v in container["env"]}
        assert env["HTTP_PORT"] == str(port)
        assert env["HTTP_ENABLED"] == "true"
        assert env["HTTP_HOST"] == "0.0.0.0"
        for probe, path in (
            ("startupProbe", "/livez"),
            ("livenessProbe", "/livez"),
            ("readinessProbe", "/readyz"),
        ):
            assert container[probe]["httpGet"] == {"path": path, "port": "http"}
            assert path in routes
    monitor = one(objects, "ServiceMonitor")
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] in routes
    service = one(objects, "Service", "-metrics")
    assert endpoint["port"] == service["spec"]["ports"][0]["name"]
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )


def test_a_relay_apart_turns_the_relay_of_the_workers_off(helm: Path, tmp_path: Path) -> None:
    objects = render(helm, tmp_path, EVERYTHING)
    worker = one(objects, "Deployment", "-worker")["spec"]["template"]["spec"]["containers"][0]
    relay = one(objects, "Deployment", "-relay")["spec"]["template"]["spec"]["containers"][0]
    assert worker["args"] == ["worker", "--processes", "4"]
    assert {"name": "RELAY_ENABLED", "value": "false"} in worker["env"]
    assert relay["args"] == ["relay"]
    inside = render(helm, tmp_path, merged(MINIMAL, {"relay": {"enabled": False}}))
    alone = one(inside, "Deployment", "-worker")["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "RELAY_ENABLED", "value": "true"} in alone["env"]
    assert not [o for o in inside if o["metadata"]["name"].endswith("-relay")]


def test_the_autoscaler_stops_at_one_consumer_per_partition(helm: Path, tmp_path: Path) -> None:
    objects = render(helm, tmp_path, EVERYTHING)
    scaled = one(objects, "ScaledObject")
    assert scaled["spec"]["maxReplicaCount"] == 3  # 12 partitions, 4 consumers per pod
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "kafka"
    assert trigger["metadata"]["topic"] == "customer.update"
    assert trigger["metadata"]["consumerGroup"] == "customer-service"
    assert trigger["metadata"]["lagThreshold"] == "5000"
    assert trigger["authenticationRef"] == {"name": "kafka-sasl"}
    assert "replicas" not in one(objects, "Deployment", "-worker")["spec"]
    single = render(helm, tmp_path, merged(EVERYTHING, {"worker": {"processes": 1}}))
    assert one(single, "ScaledObject")["spec"]["maxReplicaCount"] == 12


def test_the_chart_ships_the_alerts_and_the_dashboard_as_committed(
    helm: Path, tmp_path: Path
) -> None:
    objects = render(helm, tmp_path, EVERYTHING)
    rule = one(objects, "PrometheusRule")
    expected = yaml.safe_load(
        ALERTS.read_text().replace(
            "runbook_url: docs/", "runbook_url: https://docs.example/cs/docs/"
        )
    )
    assert rule["spec"] == expected
    board = one(objects, "ConfigMap", "-dashboard")
    assert json.loads(board["data"]["customer-service.json"]) == dashboard.build()


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"worker": {"terminationGracePeriodSeconds": 120}},
            "worker.terminationGracePeriodSeconds (120) must be above BATCH_TIMEOUT + "
            "RELAY_DRAIN_TIMEOUT + 30 s for the last Kafka commit (120)",
        ),
        (
            {
                "settings": {"BATCH_TIMEOUT": 30},
                "worker": {"processes": 2, "terminationGracePeriodSeconds": 100},
            },
            "must be above 120 with worker.processes > 1",
        ),
        (
            {"worker": {"replicas": 7}},
            "worker.replicas x worker.processes (7 x 1) must not exceed TOPIC_PARTITIONS (6)",
        ),
        (
            {"worker": {"replicas": 6, "processes": 2, "terminationGracePeriodSeconds": 150}},
            "worker.replicas x worker.processes (6 x 2) must not exceed TOPIC_PARTITIONS (6)",
        ),
        (
            {"relay": {"enabled": True, "terminationGracePeriodSeconds": 60}},
            "relay.terminationGracePeriodSeconds (60) must be above RELAY_DRAIN_TIMEOUT + 30 s",
        ),
        ({"worker": {"processes": 0}}, "worker.processes (0) must be a whole number from 1"),
        ({"worker": {"processes": "1.0"}}, "worker.processes (1.0) must be a whole number"),
        (
            {"worker": {"processes": "auto"}, "autoscaling": {"enabled": True}},
            "set autoscaling.maxReplicas with worker.processes auto",
        ),
        ({"settings": {"HTTP_ENABLED": False}}, "settings.HTTP_ENABLED must be true"),
        ({"secret": {"existingSecret": ""}}, "set secret.existingSecret"),
        (
            {
                "secret": {
                    "existingSecret": "",
                    "create": True,
                    "data": {"KAFKA_SASL_USERNAME": "x"},
                }
            },
            "secret.data.KAFKA_SASL_USERNAME is not a secret setting",
        ),
    ],
    ids=[
        "grace-below-drain",
        "grace-below-supervisor",
        "idle-replicas",
        "relay-grace-below-drain",
        "idle-processes",
        "no-processes",
        "processes-not-whole",
        "auto-without-ceiling",
        "no-http",
        "no-secret",
        "not-a-secret",
    ],
)
def test_values_the_service_cannot_run_with_are_refused(
    helm: Path, tmp_path: Path, values: dict[str, Any], message: str
) -> None:
    with pytest.raises(RenderError, match=re.escape(message)):
        render(helm, tmp_path, merged(MINIMAL, values))
