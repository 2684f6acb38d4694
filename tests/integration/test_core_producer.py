"""Producing events: psql, the SQL function, the Python API, constraints and NOTIFY."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import subprocess
from collections import Counter
from typing import Any

import asyncpg
import pytest
from pydantic import BaseModel

import pgqueue
import pgqueue.admin
from tests.helpers import wait_for
from tests.integration.core_support import (
    Calls,
    counting,
    outbox_row,
    run_burst,
)


def psql(dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the real psql binary against ``dsn`` (stop on the first error, no psqlrc)."""
    return subprocess.run(
        ["psql", dsn, "-X", "-At", "-v", "ON_ERROR_STOP=1", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


class OrderPlaced(BaseModel):
    order_id: int
    customer_email: str
    placed_at: dt.datetime


# -- 1. psql producers, then a worker ---------------------------------------------------------


async def test_psql_insert_and_enqueue_are_processed_by_a_worker(
    db_dsn: str, conn: asyncpg.Connection
) -> None:
    """A plain INSERT and pgqueue.enqueue() from psql both reach the handler and end done."""
    inserted = await asyncio.to_thread(
        psql,
        db_dsn,
        "-c",
        "INSERT INTO pgqueue.outbox (event_type, payload) "
        """VALUES ('order.placed', '{"order_id": 42}') RETURNING id""",
    )
    assert inserted.returncode == 0, inserted.stderr
    plain_id = int(inserted.stdout.split()[0])

    enqueue_sql = (
        """SELECT pgqueue.enqueue('order.placed', '{"order_id": 43}', """
        "idempotency_key => 'checkout-43')"
    )
    first = await asyncio.to_thread(psql, db_dsn, "-c", enqueue_sql)
    second = await asyncio.to_thread(psql, db_dsn, "-c", enqueue_sql)
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    keyed_id = int(first.stdout.strip())
    assert int(second.stdout.strip()) == keyed_id
    assert keyed_id != plain_id
    assert (
        await conn.fetchval(
            "SELECT count(*) FROM pgqueue.outbox WHERE idempotency_key = 'checkout-43'"
        )
        == 1
    )

    row = await outbox_row(conn, plain_id)
    assert (row["queue"], row["state"], row["attempt"]) == ("default", "pending", 0)
    assert row["payload"] == {"order_id": 42}

    registry, calls, seen = pgqueue.Registry(), Calls(), {}

    async def remember(ctx: pgqueue.Context) -> None:
        seen[ctx.event_id] = ctx.attempt

    counting(registry, calls, "order.placed", "fulfil", behaviour=remember)
    stats = await run_burst(db_dsn, registry)

    assert stats.done == 2
    assert calls == {(plain_id, "fulfil"): 1, (keyed_id, "fulfil"): 1}
    assert seen == {plain_id: 1, keyed_id: 1}
    for event_id in (plain_id, keyed_id):
        row = await outbox_row(conn, event_id)
        assert row["state"] == "done"
        assert row["processed_at"] is not None
        assert row["handlers"] is None
        assert row["lease_token"] is None


# -- 2. one NOTIFY per statement ---------------------------------------------------------------


async def _listen(db_dsn: str, channel: str) -> tuple[asyncpg.Connection, list[str]]:
    listener = await asyncpg.connect(db_dsn)
    received: list[str] = []
    await listener.add_listener(channel, lambda _c, _pid, _ch, payload: received.append(payload))
    return listener, received


async def test_ten_thousand_row_insert_sends_one_notification_with_the_queue_only(
    db_dsn: str, conn: asyncpg.Connection
) -> None:
    """A 10,000-row INSERT ... SELECT notifies once; the payload is the queue name only."""
    listener, received = await _listen(db_dsn, "pgqueue.outbox")
    try:
        await conn.execute(
            "INSERT INTO pgqueue.outbox (event_type, payload) "
            "SELECT 'bulk.row', jsonb_build_object('secret_n', g) "
            "FROM generate_series(1, 10000) AS g"
        )

        async def got_first() -> bool:
            return len(received) >= 1

        await wait_for(got_first, message="no notification for the bulk insert")
        # A later statement on another queue: its notification arrives after any the bulk
        # insert could still have sent, so once we see it the count is final.
        await conn.execute("INSERT INTO pgqueue.outbox (event_type, queue) VALUES ('m', 'marker')")

        async def got_marker() -> bool:
            return "marker" in received

        await wait_for(got_marker, message="no notification for the marker insert")
        await listener.fetchval("SELECT 1")
        assert received == ["default", "marker"]
        assert await conn.fetchval("SELECT count(*) FROM pgqueue.outbox") == 10_001
    finally:
        await listener.close()


async def test_one_statement_over_two_queues_notifies_each_queue_once(
    db_dsn: str, conn: asyncpg.Connection
) -> None:
    """The trigger sends one notification per queue touched, never per row."""
    listener, received = await _listen(db_dsn, "pgqueue.outbox")
    try:
        await conn.execute(
            "INSERT INTO pgqueue.outbox (event_type, queue) "
            "SELECT 'x', CASE WHEN g % 2 = 0 THEN 'even' ELSE 'odd' END "
            "FROM generate_series(1, 100) AS g"
        )
        await conn.execute("INSERT INTO pgqueue.outbox (event_type, queue) VALUES ('m', 'marker')")

        async def got_marker() -> bool:
            return "marker" in received

        await wait_for(got_marker, message="no notification for the marker insert")
        assert sorted(received[:-1]) == ["even", "odd"]
        assert received[-1] == "marker"
    finally:
        await listener.close()


async def test_rolled_back_insert_sends_no_notification(
    db_dsn: str, conn: asyncpg.Connection
) -> None:
    """NOTIFY is transactional: an enqueue that rolls back wakes nobody."""
    listener, received = await _listen(db_dsn, "pgqueue.outbox")
    try:
        tx = conn.transaction()
        await tx.start()
        await pgqueue.enqueue(conn, "order.placed", {"order_id": 1}, queue="rolled")
        await tx.rollback()
        await conn.execute("INSERT INTO pgqueue.outbox (event_type, queue) VALUES ('m', 'marker')")

        async def got_marker() -> bool:
            return "marker" in received

        await wait_for(got_marker, message="no notification for the marker insert")
        assert received == ["marker"]
    finally:
        await listener.close()


# -- 3. constraints at INSERT -----------------------------------------------------------------

BIG = json.dumps({"blob": "x" * (1024 * 1024)})

BAD_ROWS = [
    pytest.param(
        "", "{}", {"outbox_event_type_length", "outbox_event_type_format"}, id="empty-type"
    ),
    pytest.param("a" * 129, "{}", {"outbox_event_type_length"}, id="type-129-chars"),
    pytest.param("order placed", "{}", {"outbox_event_type_format"}, id="type-with-space"),
    pytest.param("t", "[1]", {"outbox_payload_object"}, id="payload-array"),
    pytest.param("t", '"x"', {"outbox_payload_object"}, id="payload-string"),
    pytest.param("t", "null", {"outbox_payload_object"}, id="payload-json-null"),
    pytest.param("t", BIG, {"outbox_payload_size"}, id="payload-over-1MiB"),
]


@pytest.mark.parametrize("event_type, payload, constraints", BAD_ROWS)
async def test_plain_insert_rejects_bad_rows_by_named_constraint(
    tx: asyncpg.Connection, event_type: str, payload: str, constraints: set[str]
) -> None:
    """A bad row from SQL fails at INSERT, naming the constraint it broke."""
    with pytest.raises(asyncpg.CheckViolationError) as caught:
        async with tx.transaction():
            await tx.execute(
                "INSERT INTO pgqueue.outbox (event_type, payload) VALUES ($1, $2::jsonb)",
                event_type,
                payload,
            )
    assert caught.value.constraint_name in constraints
    assert await tx.fetchval("SELECT count(*) FROM pgqueue.outbox") == 0


@pytest.mark.parametrize("event_type, payload, constraints", BAD_ROWS)
async def test_sql_enqueue_function_rejects_bad_rows_by_named_constraint(
    tx: asyncpg.Connection, event_type: str, payload: str, constraints: set[str]
) -> None:
    """pgqueue.enqueue() enforces the same constraints."""
    with pytest.raises(asyncpg.CheckViolationError) as caught:
        await tx.fetchval("SELECT pgqueue.enqueue($1, $2::jsonb)", event_type, payload)
    assert caught.value.constraint_name in constraints


async def test_payload_of_exactly_one_mebibyte_is_accepted(tx: asyncpg.Connection) -> None:
    """The limit is 1 MiB of JSON text, inclusive."""
    overhead = len(json.dumps({"blob": ""}))
    payload = json.dumps({"blob": "x" * (1024 * 1024 - overhead)})
    assert await tx.fetchval("SELECT octet_length($1::jsonb::text)", payload) == 1024 * 1024
    await tx.execute("INSERT INTO pgqueue.outbox (event_type, payload) VALUES ('t', $1)", payload)


@pytest.mark.parametrize(
    "column, value, constraint",
    [
        ("idempotency_key", "", "outbox_idempotency_key_length"),
        ("idempotency_key", "k" * 201, "outbox_idempotency_key_length"),
        ("queue", "no spaces", "outbox_queue_format"),
        ("queue", "q" * 64, "outbox_queue_format"),
        ("queue", ".lead", "outbox_queue_format"),
        ("queue", "", "outbox_queue_format"),
        ("state", "paused", "outbox_state_check"),
        ("state", "done", "outbox_processed_iff_done"),
        ("state", "running", "outbox_lease_iff_running"),
    ],
)
async def test_other_columns_are_checked_too(
    tx: asyncpg.Connection, column: str, value: str, constraint: str
) -> None:
    with pytest.raises(asyncpg.CheckViolationError) as caught:
        await tx.execute(
            f"INSERT INTO pgqueue.outbox (event_type, {column}) VALUES ('t', $1)", value
        )
    assert caught.value.constraint_name == constraint


@pytest.mark.parametrize(
    "column, value, constraint",
    [
        ("queue", "no spaces", "outbox_queue_format"),
        ("payload", "[]", "outbox_payload_object"),
        ("idempotency_key", "", "outbox_idempotency_key_length"),
        ("headers", "1", "outbox_headers_object"),
    ],
)
async def test_write_once_rules_hold_for_updates_too(
    tx: asyncpg.Connection, column: str, value: str, constraint: str
) -> None:
    """These rules are domains (sql/0009), checked when a value is written to the column,
    whether by INSERT or by an UPDATE that sets it; an UPDATE that leaves them alone (claim,
    completion) does not pay for them."""
    await tx.execute("INSERT INTO pgqueue.outbox (event_type) VALUES ('t')")
    cast = "::jsonb" if column in ("payload", "headers") else ""
    with pytest.raises(asyncpg.CheckViolationError) as caught:
        await tx.execute(f"UPDATE pgqueue.outbox SET {column} = $1{cast}", value)
    assert caught.value.constraint_name == constraint


@pytest.mark.parametrize("queue", ["q" * 63, "_", "a.b:c-d_9", "9"])
async def test_queue_names_the_rule_allows_are_accepted(tx: asyncpg.Connection, queue: str) -> None:
    """Up to 63 characters: a letter, digit or underscore, then also . : - (sql/0007)."""
    await tx.execute("INSERT INTO pgqueue.outbox (event_type, queue) VALUES ('t', $1)", queue)
    assert await tx.fetchval("SELECT queue FROM pgqueue.outbox") == queue


async def test_python_enqueue_translates_constraint_errors_without_echoing_the_payload(
    conn: asyncpg.Connection,
) -> None:
    """A rejected event becomes a PayloadError naming the constraint, not the row's data."""
    with pytest.raises(pgqueue.PayloadError, match="outbox_event_type_format") as caught:
        await pgqueue.enqueue(conn, "order placed", {"card": "4111-SECRET"})
    assert "4111-SECRET" not in str(caught.value)
    with pytest.raises(pgqueue.PayloadError, match="outbox_payload_size") as caught:
        await pgqueue.enqueue(conn, "t", {"blob": "SECRET" * 200_000})
    assert "SECRET" not in str(caught.value)
    with pytest.raises(pgqueue.PayloadError, match="1-128"):
        await pgqueue.enqueue(conn, "a" * 129, {})
    assert await conn.fetchval("SELECT count(*) FROM pgqueue.outbox") == 0


# -- 4. the Python producer API ---------------------------------------------------------------


class Rollback(Exception):
    pass


async def test_enqueue_in_a_rolled_back_transaction_delivers_nothing(
    db_dsn: str, conn: asyncpg.Connection
) -> None:
    """The caller owns the transaction: rolled back means the event never existed."""
    with pytest.raises(Rollback):
        async with conn.transaction():
            await conn.execute("CREATE TABLE orders (id int)")
            await pgqueue.enqueue(conn, "order.placed", {"order_id": 1})
            raise Rollback
    async with conn.transaction():
        kept = await pgqueue.enqueue(conn, "order.placed", {"order_id": 2})

    assert await conn.fetchval("SELECT array_agg(id) FROM pgqueue.outbox") == [kept]
    registry, calls = pgqueue.Registry(), Calls()
    counting(registry, calls, "order.placed", "h")
    stats = await run_burst(db_dsn, registry)
    assert calls == {(kept, "h"): 1}
    assert stats.claimed == 1


async def test_enqueue_of_a_pydantic_model_stores_its_json(conn: asyncpg.Connection) -> None:
    placed = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    model = OrderPlaced(order_id=7, customer_email="ada@example.com", placed_at=placed)
    event_id = await pgqueue.enqueue(conn, "order.placed", model)
    row = await outbox_row(conn, event_id)
    assert row["payload"] == json.loads(model.model_dump_json())
    assert OrderPlaced.model_validate(row["payload"]) == model


async def test_enqueue_with_the_same_key_returns_the_first_id(conn: asyncpg.Connection) -> None:
    first = await pgqueue.enqueue(conn, "order.placed", {"n": 1}, idempotency_key="order-9")
    second = await pgqueue.enqueue(conn, "order.placed", {"n": 2}, idempotency_key="order-9")
    assert first == second
    row = await outbox_row(conn, first)
    assert row["payload"] == {"n": 1}
    assert await conn.fetchval("SELECT count(*) FROM pgqueue.outbox") == 1


async def test_enqueue_run_at_and_queue_are_stored(conn: asyncpg.Connection) -> None:
    when = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    event_id = await pgqueue.enqueue(conn, "t", {}, run_at=when, queue="emails")
    row = await outbox_row(conn, event_id)
    assert row["run_at"] == when
    assert row["queue"] == "emails"


@pytest.mark.parametrize("chunk_size", [1000, 2])
async def test_enqueue_many_returns_ids_in_input_order_with_duplicates_by_key(
    conn: asyncpg.Connection, chunk_size: int
) -> None:
    """Ids line up with the input; a repeated or existing key yields the existing id."""
    existing = await pgqueue.enqueue(conn, "old", {"n": 0}, idempotency_key="k0")
    events = [
        pgqueue.Event(event_type="a", payload={"n": 1}, idempotency_key="k1"),
        pgqueue.Event(event_type="b", payload={"n": 2}),
        pgqueue.Event(event_type="c", payload={"n": 3}, idempotency_key="k1"),
        pgqueue.Event(event_type="d", payload={"n": 4}, idempotency_key="k0"),
        pgqueue.Event(event_type="e", payload={"n": 5}, idempotency_key="k2"),
        pgqueue.Event(event_type="f", payload={"n": 6}),
    ]
    ids = await pgqueue.enqueue_many(conn, events, chunk_size=chunk_size)

    assert len(ids) == 6
    assert ids[2] == ids[0]
    assert ids[3] == existing
    fresh = [ids[0], ids[1], ids[4], ids[5]]
    assert fresh == sorted(fresh) and len(set(fresh)) == 4
    rows = {r["id"]: r for r in await conn.fetch("SELECT id, event_type FROM pgqueue.outbox")}
    assert len(rows) == 5
    assert [rows[i]["event_type"] for i in ids] == ["a", "b", "a", "old", "e", "f"]


async def test_enqueue_many_of_nothing_returns_no_ids(conn: asyncpg.Connection) -> None:
    assert await pgqueue.enqueue_many(conn, []) == []


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param({"when": object()}, id="object"),
        pytest.param({"ratio": float("nan")}, id="nan"),
        pytest.param({"at": dt.datetime.now(dt.UTC)}, id="datetime-in-dict"),
        pytest.param([1, 2], id="list"),
        pytest.param("text", id="string"),
    ],
)
async def test_unserialisable_payload_raises_payload_error(
    conn: asyncpg.Connection, payload: Any
) -> None:
    with pytest.raises(pgqueue.PayloadError):
        await pgqueue.enqueue(conn, "t", payload)
    with pytest.raises(pgqueue.PayloadError):
        await pgqueue.enqueue_many(
            conn,
            [
                pgqueue.Event.model_construct(
                    event_type="t",
                    payload=payload,
                    run_at=None,
                    idempotency_key=None,
                    queue="default",
                )
            ],
        )
    assert await conn.fetchval("SELECT count(*) FROM pgqueue.outbox") == 0


async def test_unknown_event_type_stays_pending_and_visible(
    db_dsn: str, conn: asyncpg.Connection
) -> None:
    """An event nobody handles is stored, shown by status, and left alone by workers."""
    orphan = await pgqueue.enqueue(conn, "nobody.listens", {"x": 1})
    handled = await pgqueue.enqueue(conn, "order.placed", {"x": 2})
    registry, calls = pgqueue.Registry(), Calls()
    counting(registry, calls, "order.placed", "h")

    stats = await run_burst(db_dsn, registry)

    assert calls == Counter({(handled, "h"): 1})
    assert stats.claimed == 1
    row = await outbox_row(conn, orphan)
    assert (row["state"], row["attempt"], row["lease_token"]) == ("pending", 0, None)
    report = await pgqueue.admin.status(conn)
    counts = {(r.event_type, r.state): r.events for r in report.counts}
    assert counts == {("nobody.listens", "pending"): 1, ("order.placed", "done"): 1}
    ages = {r.event_type: r.oldest_ready_age for r in report.counts}
    assert ages["nobody.listens"] is not None and ages["nobody.listens"] >= 0
    assert ages["order.placed"] is None
