"""Where devstack finds kcat: $KCAT, then PATH, then its cached copy; installing is last."""

from __future__ import annotations

from pathlib import Path

import pytest

from devstack import kcat as kcat_module
from devstack.kcat import KcatSetupError, cached_path, kcat_path

RUNS = "#!/bin/sh\nexit 0\n"
BROKEN = "#!/bin/sh\necho 'error while loading shared libraries' >&2\nexit 127\n"


def fake_kcat(path: Path, script: str = RUNS) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(script)
    path.chmod(0o755)
    return path


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A devstack home with no kcat anywhere, and an installer that must not run."""
    empty = tmp_path / "empty-path"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.delenv("KCAT", raising=False)

    def no_install(home: Path) -> Path:
        raise AssertionError("kcat_path tried to install kcat")

    monkeypatch.setattr(kcat_module, "_install", no_install)
    return tmp_path / "devstack"


def put_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    on_path = fake_kcat(tmp_path / "bin" / "kcat")
    monkeypatch.setenv("PATH", str(on_path.parent))
    return on_path


def test_kcat_from_the_environment_wins(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    given = fake_kcat(tmp_path / "mine" / "kcat")
    put_on_path(tmp_path, monkeypatch)
    fake_kcat(cached_path(home))
    monkeypatch.setenv("KCAT", str(given))

    assert kcat_path(home) == given


def test_a_kcat_from_the_environment_that_does_not_run_is_an_error(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    put_on_path(tmp_path, monkeypatch)
    monkeypatch.setenv("KCAT", str(tmp_path / "missing"))

    with pytest.raises(KcatSetupError, match="KCAT="):
        kcat_path(home)


def test_kcat_on_path_comes_next(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    on_path = put_on_path(tmp_path, monkeypatch)
    fake_kcat(cached_path(home))

    assert kcat_path(home) == on_path


def test_the_cached_copy_comes_next(home: Path) -> None:
    cached = fake_kcat(cached_path(home))

    assert kcat_path(home) == cached


def test_only_when_nothing_is_found_is_kcat_installed(
    home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_kcat(cached_path(home), BROKEN)  # a copy whose libraries have gone
    installed: list[Path] = []

    def install(into: Path) -> Path:
        installed.append(into)
        return fake_kcat(cached_path(into))

    monkeypatch.setattr(kcat_module, "_install", install)

    assert kcat_path(home) == cached_path(home)
    assert installed == [home]
    assert (home / "kcat.lock").exists()
