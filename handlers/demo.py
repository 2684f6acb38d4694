"""`pgqueue demo`: the same checkout done synchronously, then through the outbox.

The synchronous checkout makes the customer wait for every post-purchase call. The outbox
checkout commits the order and its `order.placed` event in one transaction and returns; a
worker then runs all five handlers (one fails once and is retried).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import asyncpg

import pgqueue

from .checkout import LATENCY, build_registry, setup_shop


async def _checkout_sync(conn: asyncpg.Connection, email: str, total: int) -> int:
    order_id: int = await conn.fetchval(
        "INSERT INTO shop.orders (customer_email, total_cents) VALUES ($1, $2) RETURNING id",
        email,
        total,
    )
    for seconds in LATENCY.values():  # email, shipment, analytics, CRM, loyalty: one by one
        await asyncio.sleep(seconds)
    return order_id


async def _checkout_outbox(
    conn: asyncpg.Connection, email: str, total: int, schema: str
) -> tuple[int, int]:
    async with conn.transaction():
        order_id: int = await conn.fetchval(
            "INSERT INTO shop.orders (customer_email, total_cents) VALUES ($1, $2) RETURNING id",
            email,
            total,
        )
        event_id = await pgqueue.enqueue(
            conn,
            "order.placed",
            {"order_id": order_id, "customer_email": email, "total_cents": total},
            schema=schema,
        )
    return order_id, event_id


async def run(dsn: str, schema: str, echo: Callable[[str], None]) -> None:
    """Run the scenario against `dsn` (already migrated) and print what happened."""
    conn = await asyncpg.connect(dsn)
    try:
        await setup_shop(conn)
        echo(f"1) Checkout doing its post-purchase work synchronously ({', '.join(LATENCY)}):")
        t0 = time.perf_counter()
        await _checkout_sync(conn, "ada@example.com", 4200)
        sync_wait = time.perf_counter() - t0
        echo(f"   the customer waited {sync_wait:.2f} s")

        echo("2) Checkout with the outbox (order + event in one transaction):")
        t0 = time.perf_counter()
        order_id, event_id = await _checkout_outbox(conn, "grace@example.com", 4200, schema)
        outbox_wait = time.perf_counter() - t0
        echo(
            f"   the customer waited {outbox_wait * 1000:.1f} ms "
            f"({sync_wait / max(outbox_wait, 1e-6):.0f}x faster); event {event_id} queued"
        )

        echo("3) A worker runs every handler of order.placed in the background:")
        worker = pgqueue.Worker(
            dsn, build_registry(), pgqueue.WorkerSettings(schema_name=schema, burst=True)
        )
        t0 = time.perf_counter()
        stats = await worker.run()
        echo(
            f"   {stats.done} event(s) done in {time.perf_counter() - t0:.2f} s "
            "(handlers ran concurrently)"
        )
        row = await conn.fetchrow(
            f'SELECT state, processed_at, handlers FROM "{schema}".outbox WHERE id = $1', event_id
        )
        echo(f"   event {event_id}: state={row['state']}, processed_at={row['processed_at']}")
        for handler in await conn.fetch(
            f'SELECT handler, state, attempts, last_error FROM "{schema}".handler_states '
            "WHERE event_id = $1 ORDER BY handler",
            event_id,
        ):
            note = f" (retried after: {handler['last_error']})" if handler["attempts"] > 1 else ""
            echo(
                f"   - {handler['handler']}: {handler['state']}, "
                f"{handler['attempts']} attempt(s){note}"
            )
        effects = await conn.fetchrow(
            "SELECT (SELECT count(*) FROM shop.emails WHERE order_id = $1) AS emails, "
            "(SELECT count(*) FROM shop.shipments WHERE order_id = $1) AS shipments, "
            "(SELECT count(*) FROM shop.analytics WHERE order_id = $1) AS analytics, "
            "(SELECT count(*) FROM shop.loyalty WHERE order_id = $1) AS loyalty, "
            "(SELECT count(*) FROM shop.crm_contacts WHERE email = $2) AS crm_contacts",
            order_id,
            "grace@example.com",
        )
        echo(
            "   effects for order {}: {}".format(
                order_id, ", ".join(f"{k}={v}" for k, v in effects.items())
            )
        )
    finally:
        await conn.close()
