"""Where the native stack keeps its files."""

from __future__ import annotations

from pathlib import Path

import pytest

from devstack.stack import home


def test_a_relative_home_is_made_absolute_against_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # PostgreSQL, run as another user when the caller is root, starts elsewhere: a
    # relative path handed to initdb would name a folder it cannot create.
    monkeypatch.chdir(tmp_path)
    assert home({"DEVSTACK_HOME": ".devstack/bench"}) == tmp_path / ".devstack" / "bench"


def test_the_default_home_is_the_repository_s_own() -> None:
    assert home({}) == Path(__file__).resolve().parents[2] / ".devstack"
