"""The fast path for plain email addresses agrees with email-validator's full check."""

from __future__ import annotations

import itertools
import random

from email_validator import EmailNotValidError, validate_email

from schemas.fields import plain_email_is_valid

LOCALS = [
    "a", "A.B", "a..b", ".a", "a.", "a+tag", "a_b", "a-b", "o'hara", "a#b", "a!b", "a$b", "a%b",
    "a&b", "a*b", "a/b", "a=b", "a?b", "a^b", "a`b", "a{b}", "a|b", "a~b", "x" * 64, "x" * 65,
    "", "1234", "first.last", "-a", "a-",
]  # fmt: skip
DOMAINS = [
    "example.com", "EXAMPLE.COM", "ex-ample.com", "-ex.com", "ex-.com", "ex..com", ".ex.com",
    "ex.com.", "localhost", "ex", "a.b", "a.123", "123.com", "ex.local", "ex.test", "ex.invalid",
    "ex.onion", "ex.arpa", "x" * 63 + ".com", "x" * 64 + ".com", "a.b.c.d.e", "1.2.3.4",
    "xn--bcher-kva.example", "xn--invalid-.example", "ex_ample.com", "ex.c", "mail.co.uk",
    "example.museum", "a-b-c.io", "e.x.a.m.p.l.e.org", ("y" * 60 + ".") * 4 + "com",
]  # fmt: skip


def accepted_by_the_library(address: str) -> bool:
    try:
        validate_email(address, check_deliverability=False)
    except EmailNotValidError:
        return False
    return True


def test_every_address_the_fast_path_accepts_the_library_accepts() -> None:
    corpus = [f"{local}@{domain}" for local, domain in itertools.product(LOCALS, DOMAINS)]
    rng = random.Random(7)
    alphabet = "abcXYZ019.-_+!#$%&'*/=?^`{|}~@\"(),:;<>[]\\ "
    corpus += [
        "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40))) for _ in range(5000)
    ]
    corpus += [f"{rng.choice(LOCALS)}@{rng.choice(DOMAINS)}" for _ in range(2000)]

    wrongly_accepted = [
        address
        for address in corpus
        if plain_email_is_valid(address) and not accepted_by_the_library(address)
    ]

    assert wrongly_accepted == []


def test_ordinary_addresses_take_the_fast_path() -> None:
    for address in ["ada@example.com", "first.last+tag@mail.co.uk", "o'hara@a-b-c.io"]:
        assert plain_email_is_valid(address)
        assert accepted_by_the_library(address)
