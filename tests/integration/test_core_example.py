"""The checkout example (handlers/) and `pgqueue demo`, and the pgqueue.once helper."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import asyncpg
import pytest

import pgqueue
from handlers import build_registry, setup_shop
from handlers.checkout import LATENCY
from tests.helpers import run_cli
from tests.integration.core_support import handler_states, outbox_row, run_burst

ROOT = Path(__file__).resolve().parents[2]

EFFECTS = """
SELECT (SELECT count(*) FROM shop.emails WHERE order_id = $1) AS emails,
       (SELECT count(*) FROM shop.shipments WHERE order_id = $1) AS shipments,
       (SELECT count(*) FROM shop.analytics WHERE order_id = $1) AS analytics,
       (SELECT count(*) FROM shop.loyalty WHERE order_id = $1) AS loyalty,
       (SELECT orders FROM shop.crm_contacts WHERE email = $2) AS crm_orders,
       (SELECT count(*) FROM pgqueue.effects WHERE event_id = $3) AS ledger
"""


async def _effects(conn: asyncpg.Connection, order_id: int, email: str, event_id: int) -> dict:
    return dict(await conn.fetchrow(EFFECTS, order_id, email, event_id))


async def test_checkout_effects_happen_exactly_once_even_when_redelivered(
    db_dsn: str, conn: asyncpg.Connection
) -> None:
    await setup_shop(conn)
    email = "ada@example.com"
    async with conn.transaction():
        order_id = await conn.fetchval(
            "INSERT INTO shop.orders (customer_email, total_cents) VALUES ($1, 4250) RETURNING id",
            email,
        )
        event_id = await pgqueue.enqueue(
            conn,
            "order.placed",
            {"order_id": order_id, "customer_email": email, "total_cents": 4250},
        )
    registry = build_registry(delay_scale=0)

    stats = await run_burst(db_dsn, registry)

    assert (stats.done, stats.dead) == (1, 0)
    once_each = {"emails": 1, "shipments": 1, "analytics": 1, "loyalty": 1, "crm_orders": 1}
    assert await _effects(conn, order_id, email, event_id) == {**once_each, "ledger": 5}
    assert (
        await conn.fetchval("SELECT points FROM shop.loyalty WHERE order_id = $1", order_id) == 42
    )
    states = await handler_states(conn, event_id)
    assert {n: (s["state"], s["attempts"]) for n, s in states.items()} == {
        "send_confirmation_email": ("done", 1),
        "create_shipment": ("done", 1),
        "track_purchase": ("done", 1),
        "sync_crm": ("done", 2),
        "award_loyalty_points": ("done", 1),
    }

    # Re-delivery (as after a crash between the effects and the outbox update): every
    # handler runs again, and pgqueue.once keeps every effect single.
    await conn.execute(
        "UPDATE pgqueue.outbox SET state = 'pending', handlers = NULL, processed_at = NULL "
        "WHERE id = $1",
        event_id,
    )
    stats = await run_burst(db_dsn, registry)

    assert (stats.claimed, stats.done, stats.dead) == (1, 1, 0)
    row = await outbox_row(conn, event_id)
    assert (row["state"], row["attempt"]) == ("done", 2)
    assert await _effects(conn, order_id, email, event_id) == {**once_each, "ledger": 5}


async def test_once_is_true_only_the_first_time_and_rolls_back_with_the_effect(
    conn: asyncpg.Connection,
) -> None:
    ctx = pgqueue.Context(7, "order.placed", "send_email", 1, dt.datetime.now(dt.UTC))
    with pytest.raises(RuntimeError):
        async with conn.transaction():
            assert await pgqueue.once(conn, ctx)
            raise RuntimeError("the effect failed")
    assert await pgqueue.once(conn, ctx)  # the rolled-back record does not count
    assert not await pgqueue.once(conn, ctx)
    other = pgqueue.Context(7, "order.placed", "create_shipment", 1, dt.datetime.now(dt.UTC))
    assert await pgqueue.once(conn, other)
    rows = await conn.fetch("SELECT event_id, handler FROM pgqueue.effects ORDER BY handler")
    assert [(r["event_id"], r["handler"]) for r in rows] == [
        (7, "create_shipment"),
        (7, "send_email"),
    ]


async def test_demo_runs_to_completion_and_every_handler_is_done(db_dsn: str) -> None:
    """`pgqueue demo` (about 8 s of simulated service latency)."""
    result = await asyncio.to_thread(run_cli, "demo", "--dsn", db_dsn, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "state=done" in out
    for handler in LATENCY:
        assert f"- {handler}: done" in out, out
    assert "emails=1, shipments=1, analytics=1, loyalty=1" in out
