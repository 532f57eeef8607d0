"""Signed authorization mode through the real worker: only a verified token counts."""

from __future__ import annotations

import time

import asyncpg
import jwt
from pydantic import SecretStr

from service.infrastructure.settings import Settings
from tests.support import (
    TopicReader,
    command,
    event_topics,
    insert_customer,
    produce_commands,
    running_worker,
)

SECRET = "a-test-only-hmac-secret-of-32-bytes!"


def token(permissions: list[str], *, key: str = SECRET, expires_in: int = 300) -> str:
    claims = {
        "sub": "svc-billing",
        "permissions": permissions,
        "exp": int(time.time()) + expires_in,
    }
    return jwt.encode(claims, key, algorithm="HS256")


async def test_only_commands_with_a_valid_token_holding_the_action_are_applied(
    settings: Settings, db: asyncpg.Connection
) -> None:
    await insert_customer(db, "cus_jwt", invoice_prefix="JWT1", name="Before")
    signed = settings.model_copy(
        update={"auth_jwt_key": SecretStr(SECRET), "auth_jwt_algorithms": ["HS256"]}
    )
    allowed = command("cus_jwt", {"name": "Signed"}, authtoken=token(["pay:customers:update"]))
    claimed_only = command("cus_jwt", {"name": "Claimed"})  # principal/permissions attributes
    forged = command(
        "cus_jwt", {"name": "Forged"}, authtoken=token(["pay:customers:update"], key="x" * 32)
    )
    lacking = command("cus_jwt", {"name": "Reader"}, authtoken=token(["pay:customers:read"]))
    expired = command(
        "cus_jwt", {"name": "Late"}, authtoken=token(["pay:customers:update"], expires_in=-60)
    )

    async with running_worker(signed) as worker:
        await produce_commands(settings, [allowed, claimed_only, forged, lacking, expired])
        async with TopicReader(settings, event_topics(settings), worker) as reader:
            await reader.wait_for_count(settings.topic_rejections, 4)
            [event] = await reader.wait_for_count(settings.topic_events, 1)

    assert event.json()["causationid"] == allowed["id"]
    refusals = {
        r.json()["causationid"]: r.json()["data"]["error"]
        for r in reader.on(settings.topic_rejections)
    }
    assert {cause: (e["code"], e["param"]) for cause, e in refusals.items()} == {
        claimed_only["id"]: ("permission_denied", "authtoken"),
        forged["id"]: ("permission_denied", "authtoken"),
        lacking["id"]: ("permission_denied", "authtoken"),
        expired["id"]: ("permission_denied", "authtoken"),
    }
    assert "expired" in refusals[expired["id"]]["message"].lower()
    assert await db.fetchval("SELECT name FROM customers WHERE id = 'cus_jwt'") == "Signed"
