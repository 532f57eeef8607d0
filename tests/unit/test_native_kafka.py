"""The native broker's cluster id must be accepted by StorageTool's argument parser."""

from __future__ import annotations

import base64
from collections.abc import Iterator

from devstack.native_kafka import new_cluster_id


def _sequence(*values: bytes) -> Iterator[bytes]:
    yield from values


def test_a_cluster_id_is_base64url_of_sixteen_bytes() -> None:
    raw = bytes(range(16))
    cluster_id = new_cluster_id(lambda: raw)
    assert len(cluster_id) == 22
    assert base64.urlsafe_b64decode(cluster_id + "==") == raw


def test_an_id_that_would_start_with_a_dash_is_drawn_again() -> None:
    # 0xF8 puts 62 in the first six bits, which base64url writes as "-".
    dash_first = b"\xf8" + bytes(15)
    plain = bytes(16)
    draws = _sequence(dash_first, plain)
    assert base64.urlsafe_b64encode(dash_first).decode().startswith("-")
    assert new_cluster_id(lambda: next(draws)) == "AAAAAAAAAAAAAAAAAAAAAA"
