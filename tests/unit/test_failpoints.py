"""Parsing FAILPOINTS: which point, on which hit, and whether it kills or freezes."""

from __future__ import annotations

import os
import signal

import pytest

from service.infrastructure import failpoints


def test_a_point_kills_on_its_first_hit_unless_told_otherwise() -> None:
    assert failpoints.parse("after_batch_commit") == {"after_batch_commit": (1, "kill")}


def test_a_count_and_an_action_are_read_per_point() -> None:
    parsed = failpoints.parse("after_relay_publish@2, in_relay_transaction@3:stop")
    assert parsed == {"after_relay_publish": (2, "kill"), "in_relay_transaction": (3, "stop")}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("nowhere", "unknown failpoint"),
        ("after_batch_commit@0", "positive count"),
        ("after_batch_commit@x", "positive count"),
        ("after_batch_commit@1:pause", "unknown action"),
    ],
)
def test_a_spec_that_names_nothing_known_is_refused(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        failpoints.parse(spec)


def test_an_armed_point_waits_for_its_hit_and_then_disarms(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sent: list[int] = []
    monkeypatch.setattr(os, "kill", lambda _pid, sig: sent.append(sig))
    failpoints.arm("in_relay_transaction@2:stop")
    try:
        failpoints.reached("in_relay_transaction")
        assert sent == []
        failpoints.reached("in_relay_transaction")
        assert sent == [signal.SIGSTOP]
        failpoints.reached("in_relay_transaction")
        assert sent == [signal.SIGSTOP]
    finally:
        failpoints.arm("")
