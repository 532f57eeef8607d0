"""The README stays true: every setting with its default, the examples, the commands."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from pydantic import SecretStr

from service.infrastructure.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def _shown(default: object) -> str:
    if isinstance(default, SecretStr):
        default = default.get_secret_value()
    if default is None:
        return "unset"
    if default == "":
        return "empty"
    if isinstance(default, bool):
        return str(default).lower()
    if isinstance(default, list):
        return ",".join(default)
    return f"`{default}`"


@pytest.mark.parametrize("name", list(Settings.model_fields))
def test_every_setting_is_documented_with_its_default(name: str) -> None:
    row = re.search(rf"^\| `{name.upper()}` \| ([^|]+) \|", README, re.MULTILINE)
    assert row is not None, f"{name.upper()} is missing from the settings table"
    shown = _shown(Settings.model_fields[name].default).strip("`")
    assert shown in row[1], f"{name.upper()}: README says {row[1].strip()}, code says {shown}"


@pytest.mark.parametrize(
    "example", ["customer.update.json", "customer.updated.json", "customer.update.rejected.json"]
)
def test_the_readme_shows_each_published_example(example: str) -> None:
    blocks = [json.loads(block) for block in re.findall(r"```json\n(.*?)```", README, re.S)]
    assert json.loads((ROOT / "schemas" / "examples" / example).read_text()) in blocks


def test_the_ci_runs_the_test_command_the_readme_gives() -> None:
    assert "| Run the whole test suite | `make check` |" in README
    assert (ROOT / ".ci" / "run").read_text().strip().endswith("make check")


@pytest.mark.parametrize(
    "target", ["run", "check", "up", "status", "down", "destroy", "schemas", "faults", "bench"]
)
def test_each_make_target_the_readme_names_exists(target: str) -> None:
    assert f"make {target}" in README
    assert re.search(rf"^{target}:", (ROOT / "Makefile").read_text(), re.MULTILINE)
