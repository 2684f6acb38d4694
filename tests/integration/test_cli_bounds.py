"""Values PostgreSQL (or the user) can produce that Python cannot take as they are (issue 11,
item 5): payloads Python cannot decode, and numbers past what an option's column holds."""

from __future__ import annotations

import json

import asyncpg
import pytest

import pgqueue
import pgqueue.admin
import pgqueue.errors
from tests.integration.test_core_cli import assert_one_line_error, cli

HUGE_INT = "9" * 5000  # json.loads: "Exceeds the limit (4300 digits)"
DEEP = '{"a":' * 10_000 + "1" + "}" * 10_000  # json.loads: RecursionError


async def test_events_show_gives_the_raw_text_of_a_payload_python_cannot_decode(
    conn: asyncpg.Connection, db_dsn: str
) -> None:
    ids = {}
    for name, text in (("huge", '{"n": ' + HUGE_INT + "}"), ("deep", DEEP)):
        ids[name] = await conn.fetchval(
            "SELECT pgqueue.enqueue('bad.payload', $1::text::jsonb)", text
        )
    for name, event_id in ids.items():
        shown = await cli("events", "show", str(event_id), "--dsn", db_dsn)
        assert shown.returncode == 0 and "Traceback" not in shown.stderr, shown.stderr
        assert "payload (raw): Python cannot decode this payload" in shown.stdout
        stored = await conn.fetchval(
            "SELECT payload::text FROM pgqueue.outbox WHERE id = $1", event_id
        )
        assert f"  {stored}" in shown.stdout.splitlines()  # the text as stored, whole
        assert f"{event_id}  bad.payload" in shown.stdout

        as_json = await cli("events", "show", str(event_id), "--json", "--dsn", db_dsn)
        assert as_json.returncode == 0, as_json.stderr
        detail = json.loads(as_json.stdout)
        assert detail["payload"] is None and detail["payload_text"] == stored
        assert ("RecursionError" if name == "deep" else "4300") in detail["payload_note"]

    detail = await pgqueue.admin.get_event(conn, ids["huge"])
    assert detail is not None and detail.payload is None and detail.payload_note


async def test_every_id_range_and_number_option_refuses_out_of_range_in_one_line(
    db_dsn: str,
) -> None:
    big = "99999999999999999999"  # past bigint and past sys.maxsize
    cases = [
        (("retry", "--ids", f"1..{big}", "--yes"), 2, "is not an event id"),
        (("retry", "--ids", big, "--yes"), 2, "is not an event id"),
        (("retry", "--ids", HUGE_INT, "--yes"), 2, "is not an event id"),
        (("retry", "--ids", "0..5", "--yes"), 2, "is not an event id"),
        (("retry", "--ids", "9..3", "--yes"), 2, "empty range"),
        (("retry", "--id", big), 2, "--id"),
        (("retry", "--id", HUGE_INT), 2, "--id"),
        (("discard", "--ids", f"1..{big}", "--yes"), 2, "is not an event id"),
        (("replay", "--type", "t", "--ids", f"1..{big}", "--yes"), 2, "is not an event id"),
        (("retry", "--all", "--since", "99999999999d", "--yes"), 2, "too long"),
        (("events", "list", "--since", "99999999999999d"), 2, "too long"),
        (("events", "list", "--before-id", big), 2, "--before-id"),
        (("events", "show", HUGE_INT), 2, "ID"),
        (("prune", "--older-than", "99999999999d", "--yes"), 2, "too long"),
        (("enqueue", "t", "{}", "--delay", "99999999999d"), 2, "too long"),
        (("enqueue", "t", '{"n": ' + HUGE_INT + "}"), 2, "cannot be read"),
        (("enqueue", "t", DEEP), 2, "cannot be read"),
        (("limits", "--set", f"crm={big}"), 2, "1 <= N <= 2147483647"),
        (("limits", "--set", f"crm={HUGE_INT}"), 2, "1 <= N <= 2147483647"),
    ]
    for args, code, fragment in cases:
        result = await cli(*args, "--dsn", db_dsn)
        try:
            assert_one_line_error(result, code, fragment)
        except AssertionError as exc:
            raise AssertionError(f"pgqueue {' '.join(a[:40] for a in args)}: {exc}") from exc


def test_the_api_refuses_an_id_range_past_bigint_with_a_configuration_error() -> None:
    from pgqueue._steer import selection

    for ids in ([range(1, 10**20)], [10**20], [range(0, 5)]):
        with pytest.raises(pgqueue.errors.ConfigurationError, match="event ids are between 1 and"):
            selection(ids=ids)
