"""``python -m bench.messages`` builds real messages and prints one figure per mode."""

from __future__ import annotations

import sys

import pytest

from bench import messages


def test_it_prints_the_cpu_per_command_with_the_state_on_and_off(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "argv", ["bench.messages", "--runs", "2", "--batch", "3"])
    messages.main()
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "messages_for, state on",
        "messages_for, state off",
    ]
    assert all("us CPU per command (median of 2 runs" in line for line in lines)


def test_its_batch_is_of_applied_updates() -> None:
    decisions = messages._decisions(4)
    assert [d.outcome for d in decisions] == ["applied"] * 4
    assert all(d.applied is not None and d.applied.after.version == 6 for d in decisions)
