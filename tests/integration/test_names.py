"""The naming rules of pgqueue/_names.py equal what the database accepts (sql/)."""

from __future__ import annotations

import asyncpg

from pgqueue import _names

CANDIDATES = [
    "order.placed",
    "a",
    "_",
    "0",
    "Order_2/v1:placed-x.y",
    "y" * 62,
    "y" * 63,
    "y" * 64,
    "y" * 127,
    "y" * 128,
    "y" * 129,
    "",
    " ",
    "order placed",
    "order.placed\n",
    "\norder",
    "ordér.placed",
    "заказ",
    "order\t",
    ".order",
    ":order",
    "/order",
    "-order",
    "order/",
    "a:b",
    "a/b",
    "a;b",
    "a'b",
    'a"b',
    "A-Z_a-z.0-9",
    "x" * 63 + ":",
    "100/s",
    "1/m",
    "999999999/h",
    "1000000000/h",
    "0/s",
    "01/s",
    "10/d",
    "10/S",
    "10/s ",
    "1e3/s",
    "/s",
]


async def _accepts(conn: asyncpg.Connection, sql: str, value: str) -> bool:
    """True when ``sql`` (with ``value`` as $1) runs; the transaction is always rolled back."""
    tx = conn.transaction()
    await tx.start()
    try:
        await conn.execute(sql, value)
        return True
    except asyncpg.CheckViolationError:
        return False
    finally:
        await tx.rollback()


RULES = {
    "event type (domain event_type_name)": (
        _names.event_type_ok,
        "SELECT $1::text::pgqueue.event_type_name",
    ),
    "queue (domain queue_name)": (_names.queue_ok, "SELECT $1::text::pgqueue.queue_name"),
    "handler rate (domain handler_rate)": (
        lambda v: _names.rate_problem(v) is None,
        "SELECT $1::text::pgqueue.handler_rate",
    ),
    "schedule name (schedules_name_format)": (
        _names.schedule_name_ok,
        "INSERT INTO pgqueue.schedules (name, expression, event_type) "
        "VALUES ($1, '* * * * *', 'x')",
    ),
}


async def test_each_python_rule_accepts_exactly_what_the_database_accepts(
    conn: asyncpg.Connection,
) -> None:
    differ = [
        (rule, value, python_ok)
        for rule, (ok, sql) in RULES.items()
        for value in CANDIDATES
        if (python_ok := ok(value)) is not await _accepts(conn, sql, value)
    ]
    assert differ == []  # (rule, value, what Python says) where SQL says the opposite


async def test_every_handler_name_the_rule_accepts_is_stored(conn: asyncpg.Connection) -> None:
    limit = "INSERT INTO pgqueue.handler_limits (handler, concurrency) VALUES ($1, 1)"
    for value in ["h" * 128, "envoi.reçu", "a b", "send_email", "x\ny"]:
        assert _names.handler_name_problem(value) is None
        assert await _accepts(conn, limit, value)
        assert await conn.fetchval("SELECT jsonb_build_object($1::text, 1) ? $1", value)
    assert _names.handler_name_problem("h" * 129) is not None
    assert not await _accepts(conn, limit, "h" * 129)
