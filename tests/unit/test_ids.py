"""Event ids: random UUIDs of version 4, drawn in blocks."""

from __future__ import annotations

import os
import uuid

import pytest

from service.infrastructure.ids import RandomUuids


def test_an_id_is_the_canonical_text_of_a_version_4_uuid() -> None:
    new_id = RandomUuids()
    for _ in range(1000):
        text = new_id()
        parsed = uuid.UUID(text)
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
        assert str(parsed) == text


def test_ids_do_not_repeat_across_blocks() -> None:
    new_id = RandomUuids()
    ids = [new_id() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)


def test_every_random_bit_takes_both_values() -> None:
    new_id = RandomUuids()
    values = [uuid.UUID(new_id()).int for _ in range(2000)]
    fixed = (0xF << 76) | (0x3 << 62)  # the version and variant bits
    ones = 0
    zeros = 0
    for value in values:
        ones |= value
        zeros |= ~value
    random_bits = ((1 << 128) - 1) & ~fixed
    assert ones & random_bits == random_bits
    assert zeros & random_bits == random_bits


def test_two_sources_draw_different_ids() -> None:
    assert RandomUuids()() != RandomUuids()()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork is POSIX")
def test_a_forked_child_does_not_repeat_its_parents_next_ids() -> None:
    new_id = RandomUuids()
    new_id()  # a block is drawn, most of it still to hand out
    reader, writer = os.pipe()
    child = os.fork()
    if child == 0:  # never back into pytest, whatever happens here
        try:
            os.close(reader)
            os.write(writer, " ".join(new_id() for _ in range(10)).encode())
        finally:
            os._exit(0)
    os.close(writer)
    with os.fdopen(reader) as pipe:
        from_child = set(pipe.read().split())
    os.waitpid(child, 0)
    from_parent = {new_id() for _ in range(10)}
    assert len(from_child) == 10
    assert not from_child & from_parent
