"""Finding a key that a JSON object holds twice.

orjson, like most parsers, keeps the last of two equal keys without a word, and other
parsers keep the first: a command with ``"name"`` twice means different things to
different readers, so it is refused. orjson cannot report them, so:

- **the fast path** counts colons. Every member of an object has one structural colon,
  and any other colon is inside a string. orjson writes the parsed document back with
  every colon as itself, so when the raw text holds no escape (which could write a colon
  as ``\\u003a``) and as many colons as the document written back, no member was
  dropped. Two counts and one serialisation, all in C.
- **the slow path**, taken only when the counts differ or the text holds an escape,
  parses again keeping every pair, and names the first duplicate.
"""

from __future__ import annotations

import json

import orjson


def duplicate_key(raw: bytes, document: object) -> str | None:
    """The dotted path (``data.address.city``) of the first key that appears twice in one
    object of ``raw``, whose orjson parse is ``document``; None when there is none.
    First means outermost: an object's own keys in order, then its values in order."""
    if b"\\u" not in raw and raw.count(b":") == orjson.dumps(document).count(b":"):
        return None
    pairs = json.loads(raw, object_pairs_hook=_Object)
    return _first_duplicate(pairs, "")


class _Object(list[tuple[str, object]]):
    """An object's members in order, duplicates kept (``object_pairs_hook``)."""


def _first_duplicate(node: object, path: str) -> str | None:
    if isinstance(node, _Object):
        seen: set[str] = set()
        for key, _ in node:
            where = f"{path}.{key}" if path else key
            if key in seen:
                return where
            seen.add(key)
        for key, child in node:
            found = _first_duplicate(child, f"{path}.{key}" if path else key)
            if found is not None:
                return found
    elif isinstance(node, list):
        for index, child in enumerate(node):
            found = _first_duplicate(child, f"{path}.{index}" if path else str(index))
            if found is not None:
                return found
    return None
