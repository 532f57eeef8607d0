"""The schemas of the custom resources the chart renders (KEDA's ScaledObject, the
Prometheus operator's ServiceMonitor and PrometheusRule), from the CRDs those projects
publish, so that the tests validate them as a cluster with those operators would.

The CRD files come from each project's Go module (``go mod download`` from the module
proxy, kept in Go's module cache), at the versions pinned here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from devstack import go_build


class CrdSetupError(RuntimeError):
    """The CRDs could not be fetched or read; the message says why."""


@dataclass(frozen=True)
class CrdSource:
    module: str
    version: str
    folder: str
    files: tuple[str, ...]


SOURCES = (
    CrdSource(
        "github.com/kedacore/keda/v2",
        "v2.21.0",
        "config/crd/bases",
        ("keda.sh_scaledobjects.yaml",),
    ),
    CrdSource(
        "github.com/prometheus-operator/prometheus-operator",
        "v0.88.0",
        "example/prometheus-operator-crd",
        (
            "monitoring.coreos.com_servicemonitors.yaml",
            "monitoring.coreos.com_prometheusrules.yaml",
        ),
    ),
)

#: (apiVersion, kind) -> the OpenAPI v3 schema of that served version.
Schemas = dict[tuple[str, str], dict[str, Any]]


def crd_schemas() -> Schemas:
    schemas: Schemas = {}
    for source in SOURCES:
        root = go_build.go_download(
            what=f"the CRDs of {source.module}",
            module=source.module,
            version=source.version,
            error=CrdSetupError,
        )
        for name in source.files:
            path = root / source.folder / name
            try:
                crd = yaml.safe_load(path.read_text())
            except (OSError, yaml.YAMLError) as exc:
                raise CrdSetupError(f"cannot read {path}: {exc}") from exc
            schemas.update(_served(crd))
    return schemas


def _served(crd: dict[str, Any]) -> Schemas:
    spec = crd["spec"]
    return {
        (f"{spec['group']}/{version['name']}", spec["names"]["kind"]): version["schema"][
            "openAPIV3Schema"
        ]
        for version in spec["versions"]
        if version.get("served")
    }


def unknown_fields(value: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """The fields of ``value`` that ``schema`` does not declare: the API server would drop
    them without a word (it prunes unknown fields of custom resources), so a misspelt
    one is found here or never."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    found: list[str] = []
    if isinstance(value, dict):
        properties = schema.get("properties")
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            where = f"{path}.{key}" if path else key
            if properties is not None and key in properties:
                found += unknown_fields(item, properties[key], where)
            elif isinstance(extra, dict):
                found += unknown_fields(item, extra, where)
            elif properties is not None and extra is not True:
                found.append(where)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            found += unknown_fields(item, schema["items"], f"{path}[{index}]")
    return found
