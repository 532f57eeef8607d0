"""duplicate_key: its fast path never misses a key written twice."""

from __future__ import annotations

import json
from typing import Any

import orjson
from hypothesis import given
from hypothesis import strategies as st

from service.domain.duplicate_keys import duplicate_key

# Keys and strings rich in what could fool a count of colons: colons, quotes, escapes.
TEXT = st.text(st.sampled_from('ab:"\\\u00e9'), max_size=4)
SCALAR = st.one_of(st.none(), st.booleans(), st.integers(), TEXT)
VALUE = st.recursive(
    SCALAR,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.lists(st.tuples(TEXT, inner), max_size=3)
    ),
    max_leaves=12,
)


def write(node: Any) -> str:
    """JSON text of ``node``, where a list of pairs is an object whose keys may repeat."""
    if isinstance(node, list) and all(isinstance(item, tuple) for item in node) and node:
        return "{" + ",".join(f"{json.dumps(k)}:{write(v)}" for k, v in node) + "}"
    if isinstance(node, list):
        return "[" + ",".join(write(item) for item in node) + "]"
    return json.dumps(node)


def repeats(node: Any) -> bool:
    if isinstance(node, list) and node and all(isinstance(item, tuple) for item in node):
        keys = [key for key, _ in node]
        return len(set(keys)) < len(keys) or any(repeats(value) for _, value in node)
    if isinstance(node, list):
        return any(repeats(item) for item in node)
    return False


@given(st.lists(st.tuples(TEXT, VALUE), min_size=1, max_size=4))
def test_a_repeated_key_is_found_wherever_it_is(pairs: list[tuple[str, Any]]) -> None:
    raw = write(pairs).encode()

    found = duplicate_key(raw, orjson.loads(raw))

    assert (found is not None) == repeats(pairs)


def test_it_names_the_path_of_the_first_one() -> None:
    raw = b'{"a":{"b":[{"c":1,"c":2}]},"d":1}'

    assert duplicate_key(raw, orjson.loads(raw)) == "a.b.0.c"


def test_an_escaped_colon_cannot_hide_a_repeated_key() -> None:
    # As many colons as members plus the colons the parsed strings hold: one of the
    # latter was written as an escape, and the difference is the repeated key.
    raw = b'{"a":"x\\u003ay","b":1,"b":2}'

    assert duplicate_key(raw, orjson.loads(raw)) == "b"
