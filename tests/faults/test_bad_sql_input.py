"""Bad input written by a plain SQL client: rejected at INSERT, or settled without harm.

Each case inserts one bad event with raw SQL, then a normal event; a real worker must settle
the normal event (and a second one enqueued after it went idle) whatever the bad one did.
"""

from __future__ import annotations

from typing import Any

import asyncpg
import pytest

import pgqueue
from tests.faults.conftest import Workers
from tests.helpers import wait_for

DEPTH = 5000  # PostgreSQL accepts it; Python's json.loads recurses ~1000 levels deep


def nested(depth: int) -> str:
    return '{"a": ' * depth + "1" + "}" * depth


# (sql, args, expected): expected is "SQLSTATE[/constraint]" when PostgreSQL must reject the
# INSERT, else the state the bad event must end in.
CASES: list[Any] = [
    pytest.param(
        "SELECT pgqueue.enqueue('fault', $1::jsonb)",
        ['{"x": "\\u0000"}'],
        "22P05",  # untranslatable_character: jsonb has no NUL
        id="payload-nul-escape",
    ),
    pytest.param(
        "INSERT INTO pgqueue.outbox (event_type, payload) VALUES ('fault', $1::jsonb)",
        ['{"x": "a\\u0000b"}'],
        "22P05",
        id="payload-nul-escape-insert",
    ),
    pytest.param(
        "SELECT pgqueue.enqueue('fault', $1::jsonb)",
        [nested(DEPTH)],
        "dead",  # at once, without running: Python cannot decode it
        id="payload-deeply-nested",
    ),
    pytest.param(
        "SELECT pgqueue.enqueue('fault', $1::jsonb)",
        ["[1, 2]"],
        "23514/outbox_payload_object",
        id="payload-array",
    ),
    pytest.param("SELECT pgqueue.enqueue(NULL, '{}')", [], "23502", id="null-event-type"),
    pytest.param("SELECT pgqueue.enqueue('fault', NULL)", [], "23502", id="null-payload"),
    pytest.param(
        "INSERT INTO pgqueue.outbox (event_type, payload, queue) VALUES ('fault', '{}', NULL)",
        [],
        "23502",
        id="null-queue",
    ),
    pytest.param(
        "INSERT INTO pgqueue.outbox (event_type, run_at) VALUES ('fault', NULL)",
        [],
        "23502",
        id="null-run-at",
    ),
    pytest.param(
        "SELECT pgqueue.enqueue('fault', '{}', '0001-01-01 00:00Z')", [], "done", id="run-at-year-1"
    ),
    pytest.param(
        "SELECT pgqueue.enqueue('fault', '{}', '-infinity')",
        [],
        "23514/outbox_run_at_finite",
        id="run-at-minus-infinity",
    ),
    pytest.param(
        "SELECT pgqueue.enqueue('fault', '{}', '9999-12-31 00:00Z')",
        [],
        "pending",
        id="run-at-year-9999",
    ),
    pytest.param(
        "SELECT pgqueue.enqueue('fault', '{}', 'infinity')",
        [],
        "23514/outbox_run_at_finite",
        id="run-at-infinity",
    ),
]


async def _state(conn: asyncpg.Connection, event_id: int) -> str:
    return str(await conn.fetchval("SELECT state FROM pgqueue.outbox WHERE id = $1", event_id))


@pytest.mark.parametrize(("sql", "args", "expected"), CASES)
async def test_bad_sql_input_is_rejected_or_settled_without_harm(
    fconn: asyncpg.Connection,
    db_dsn: str,
    workers: Workers,
    sql: str,
    args: list[Any],
    expected: str,
) -> None:
    bad: int | None = None
    if expected[0].isdigit():
        with pytest.raises(asyncpg.PostgresError) as caught:
            await fconn.execute(sql, *args)
        sqlstate, _, constraint = expected.partition("/")
        assert caught.value.sqlstate == sqlstate, caught.value
        if constraint:
            assert caught.value.constraint_name == constraint
        assert await fconn.fetchval("SELECT count(*) FROM pgqueue.outbox") == 0
    else:
        bad = await fconn.fetchval(sql, *args)
        if bad is None:  # a bare INSERT: find the row
            bad = await fconn.fetchval("SELECT max(id) FROM pgqueue.outbox")
    normal = await pgqueue.enqueue(fconn, "fault", {})
    worker = workers.start(db_dsn)

    async def settled(event_id: int) -> bool:
        if not worker.alive:
            raise AssertionError(f"the worker exited:\n{worker.stderr()[-3000:]}")
        return await _state(fconn, event_id) in ("done", "dead")

    await wait_for(lambda: settled(normal), timeout=20, message="normal event not settled")
    assert await _state(fconn, normal) == "done"
    # The worker is idle now (it computes when the next event is due): it must still work.
    later = await pgqueue.enqueue(fconn, "fault", {})
    await wait_for(lambda: settled(later), timeout=20, message="later event not settled")
    assert await _state(fconn, later) == "done"

    if bad is not None:
        if expected == "pending":
            row = await fconn.fetchrow(
                "SELECT state, attempt FROM pgqueue.outbox WHERE id = $1", bad
            )
            assert (row["state"], row["attempt"]) == ("pending", 0)
        else:
            await wait_for(lambda: settled(bad), timeout=20, message="bad event not settled")
            assert await _state(fconn, bad) == expected
            if expected == "dead":  # at once: one attempt, no handler ran
                dead = await fconn.fetchrow(
                    "SELECT attempt, last_error FROM pgqueue.outbox WHERE id = $1", bad
                )
                assert dead["attempt"] == 1
                assert "payload cannot be decoded" in dead["last_error"]
                assert (
                    await fconn.fetchval("SELECT count(*) FROM fault_log WHERE event_id = $1", bad)
                    == 0
                )
    assert worker.alive
