"""Handlers the dashboard tests run (in process, and as ``pgqueue worker`` in a child).

``order.paid`` has two handlers: ``crm`` always succeeds; ``mail`` fails, without a retry,
while the test's own table ``mail_down`` exists, so its events end dead with a real error
and succeed once the test drops the table and retries them. ``mail`` has a concurrency
limit, so the limits page has a row.
"""

from __future__ import annotations

from typing import Any

import asyncpg
from tenacity import stop_after_attempt

import pgqueue

registry = pgqueue.Registry()
ONCE = pgqueue.RetryPolicy(stop=stop_after_attempt(1))


class MailServerDown(Exception):
    """What the mail handler raises while ``mail_down`` exists."""


@registry.on("order.paid", name="crm")
async def crm(payload: dict[str, Any], ctx: pgqueue.Context) -> None:
    """Always succeeds."""


@registry.on("order.paid", name="mail", retry=ONCE, concurrency=3)
async def mail(payload: dict[str, Any], ctx: pgqueue.Context) -> None:
    """Fails while the table mail_down exists."""
    async with ctx.pool.acquire() as conn:
        down = await conn.fetchval("SELECT to_regclass('public.mail_down') IS NOT NULL")
    if down:
        raise MailServerDown(f"SMTP 421 mail.example.com unavailable (order {payload['order']})")


@registry.on("report.built")
async def archive(payload: dict[str, Any], ctx: pgqueue.Context) -> None:
    """Always succeeds."""


async def seed(conn: asyncpg.Connection, orders: int = 6, reports: int = 4) -> None:
    """Enqueue events; the caller runs a worker over them."""
    await pgqueue.enqueue_many(
        conn,
        [
            *(
                pgqueue.Event(
                    event_type="order.paid",
                    payload={"order": n, "email": f"customer{n}@example.com"},
                )
                for n in range(orders)
            ),
            *(
                pgqueue.Event(event_type="report.built", payload={"report": n}, queue="reports")
                for n in range(reports)
            ),
        ],
    )
