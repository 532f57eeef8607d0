"""How outbox headers are stored: the same text whichever way it is made."""

from __future__ import annotations

import pytest

from service.adapters.postgres.outbox import decode_headers, encode_headers

CASES = [
    (("content-type", b"application/cloudevents+json; charset=UTF-8"),),
    (("content-type", b"x"), ("traceparent", b"00-abc-01")),
    (("k", None),),
    (),
]


@pytest.mark.parametrize("headers", CASES)
def test_headers_read_back_as_written_from_a_tuple_or_a_list(
    headers: tuple[tuple[str, bytes | None], ...],
) -> None:
    assert encode_headers(headers) == encode_headers(list(headers))
    assert decode_headers(encode_headers(headers)) == list(headers)
    assert encode_headers(headers) == encode_headers(headers)  # the cached text, again


def test_a_decoded_list_is_the_callers_own() -> None:
    text = encode_headers(CASES[0])
    first = decode_headers(text)
    first.append(("outbox-id", b"1"))
    assert decode_headers(text) == list(CASES[0])
