"""What the README promises a handler: a plain-dict payload, every attribute of ``ctx``, and
the SQL producer's ``jsonb`` payload (``json`` values cast)."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import asyncpg

import pgqueue
from tests.integration.core_support import run_burst

README = Path(__file__).resolve().parents[2] / "README.md"


async def test_a_dict_handler_without_ctx_and_every_ctx_attribute(
    db_dsn: str, conn: asyncpg.Connection
) -> None:
    seen: dict[str, Any] = {}
    registry = pgqueue.Registry()

    @registry.on("user.signup")
    async def welcome(payload: dict[str, Any]) -> None:  # no ctx parameter
        seen["payload"] = payload

    @registry.on("user.signup", name="crm_sync")
    async def with_context(payload: dict[str, Any], ctx: pgqueue.Context) -> None:
        async with ctx.pool.acquire() as c:
            seen["pool works"] = await c.fetchval("SELECT 1")
        seen["ctx"] = ctx

    event_id = await pgqueue.enqueue(conn, "user.signup", {"email": "a@example.com", "n": [1]})
    await run_burst(db_dsn, registry)

    assert seen["payload"] == {"email": "a@example.com", "n": [1]}
    assert type(seen["payload"]) is dict  # a plain dict, unvalidated
    ctx = seen["ctx"]
    created_at = await conn.fetchval(
        "SELECT created_at FROM pgqueue.outbox WHERE id = $1", event_id
    )
    assert (ctx.event_id, ctx.event_type, ctx.handler, ctx.attempt) == (
        event_id, "user.signup", "crm_sync", 1,
    )  # fmt: skip
    assert ctx.created_at == created_at and ctx.created_at.tzinfo is not None
    assert ctx.key == f"{event_id}:crm_sync"
    assert ctx.schema == "pgqueue" and seen["pool works"] == 1


def test_the_readme_lists_every_ctx_attribute() -> None:
    section = README.read_text().split("## Handling events", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"^\s*\| `ctx\.(\w+)` \|", section, flags=re.MULTILINE))
    fields = {f.name for f in dataclasses.fields(pgqueue.Context)}
    properties = {n for n, v in vars(pgqueue.Context).items() if isinstance(v, property)}
    assert listed == fields | properties


async def test_sql_enqueue_takes_jsonb_and_json_values_cast_as_the_readme_says(
    conn: asyncpg.Connection,
) -> None:
    calls = [
        "SELECT pgqueue.enqueue('t.sql', '{\"order_id\": 42}')",
        "SELECT pgqueue.enqueue('t.sql', json_build_object('order_id', 42)::jsonb)",
        "SELECT pgqueue.enqueue('t.sql', jsonb_build_object('order_id', 42))",
    ]
    ids = [await conn.fetchval(sql) for sql in calls]
    payloads = await conn.fetch(
        "SELECT payload FROM pgqueue.outbox WHERE id = ANY($1::bigint[]) ORDER BY id", ids
    )
    assert [r["payload"] for r in payloads] == ['{"order_id": 42}'] * 3
