"""Retry and discard of dead events and handlers, previews, confirmation and bad input, through
the CLI with real workers (see test_steer.py for replay)."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import pty
import subprocess
from collections import Counter

import asyncpg
import pytest

import pgqueue
import pgqueue.admin
import pgqueue.errors
from tests.helpers import run_cli
from tests.integration.core_support import outbox_row, run_burst
from tests.integration.test_core_cli import assert_one_line_error
from tests.integration.test_steer import CLI, ROOT, processed, recording, runs, states

TWO_HOURS = dt.timedelta(hours=2)


async def cli(*args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(run_cli, *args, input=input, cwd=ROOT)


def on_a_terminal(*args: str, answer: str) -> subprocess.CompletedProcess[str]:
    """Run the CLI with stdin on a pseudo-terminal (so it asks) and type ``answer``."""
    leader, follower = pty.openpty()
    try:
        proc = subprocess.Popen(
            [*CLI, *args], cwd=ROOT, stdin=follower, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        os.write(leader, answer.encode() + b"\n")
        out, err = proc.communicate(timeout=60)
    finally:
        os.close(leader)
        os.close(follower)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


async def test_retry_of_one_dead_handler_keeps_its_siblings_done(
    db_dsn: str, conn: asyncpg.Connection
) -> None:
    broken = {"a", "b"}
    ids = await processed(conn, db_dsn, recording("ok", "a", "b", broken=broken), 3)
    assert set((await states(conn)).values()) == {"dead"}
    broken.clear()
    # A handler deployed since the events died must not run either: only 'a' was asked for.
    registry = recording("ok", "a", "b", "late", broken=broken)

    result = await cli(
        "retry", "--handler", "a", "--ids", f"{ids[0]}..{ids[1]}", "--yes", "--dsn", db_dsn
    )

    assert result.returncode == 0, result.stderr
    assert "2 dead event(s) with dead handler a to retry" in result.stdout
    assert "2 dead event(s) with dead handler a sent back to pending" in result.stdout
    await run_burst(db_dsn, registry)
    ran = Counter({(i, "ok"): 1 for i in ids})
    ran.update({(ids[0], "a"): 1, (ids[1], "a"): 1})
    assert await runs(conn) == ran
    # b is still dead on the two retried events; the third was not touched at all.
    assert await states(conn) == dict.fromkeys(ids, "dead")
    row = await outbox_row(conn, ids[0])
    assert {h: r["state"] for h, r in row["handlers"].items()} == {
        "ok": "done",
        "a": "done",
        "b": "dead",
        "*": "done",
    }
    assert (await outbox_row(conn, ids[2]))["handlers"]["a"]["state"] == "dead"


async def test_retry_by_creation_time_with_the_api(db_dsn: str, conn: asyncpg.Connection) -> None:
    ids = await processed(conn, db_dsn, recording("a", broken={"a"}), 3)
    await conn.execute(
        "UPDATE pgqueue.outbox SET created_at = now() - interval '3 hours' WHERE id = $1", ids[0]
    )
    seen: list[int] = []
    assert await pgqueue.admin.count_dead(conn, since=TWO_HOURS) == 2
    assert await pgqueue.admin.retry(conn, since=TWO_HOURS, batch_size=1, progress=seen.append) == [
        ids[1],
        ids[2],
    ]
    assert seen == [1, 2]
    assert await pgqueue.admin.retry(conn, until=TWO_HOURS) == [ids[0]]


async def test_discarded_event_is_never_run_again_shown_and_pruned(
    db_dsn: str, conn: asyncpg.Connection
) -> None:
    broken = {"a"}
    ids = await processed(conn, db_dsn, recording("a", broken=broken), 2)

    result = await cli("discard", "--ids", str(ids[0]), "--yes", "--dsn", db_dsn)

    assert result.returncode == 0, result.stderr
    assert "1 dead event(s) discarded" in result.stdout
    assert await states(conn) == {ids[0]: "discarded", ids[1]: "dead"}
    row = await outbox_row(conn, ids[0])
    assert row["last_error"] == "a: Discard: a is broken"  # kept for audit
    assert row["handlers"]["a"]["state"] == "discarded"
    broken.clear()
    retried = await cli("retry", "--all", "--yes", "--dsn", db_dsn)
    assert "1 dead event(s) sent back to pending" in retried.stdout, retried.stderr
    await run_burst(db_dsn, recording("a", broken=broken))
    assert await runs(conn) == Counter({(ids[1], "a"): 1})
    assert await states(conn) == {ids[0]: "discarded", ids[1]: "done"}

    status = await cli("status", "--dsn", db_dsn)
    header, line = status.stdout.splitlines()[:2]
    assert header.split()[2:7] == ["pending", "running", "done", "dead", "discarded"]
    assert line.split()[:6] == ["t", "0", "0", "1", "0", "1"]
    kept = await cli("prune", "--older-than", "0s", "--yes", "--dsn", db_dsn)
    assert "deleted 1 event(s)" in kept.stdout, kept.stderr
    assert await states(conn) == {ids[0]: "discarded"}
    pruned = await cli("prune", "--older-than", "0s", "--discarded", "--yes", "--dsn", db_dsn)
    assert "1 done and discarded event(s)" in pruned.stdout, pruned.stderr
    assert await states(conn) == {}


async def test_discarding_one_of_two_dead_handlers(db_dsn: str, conn: asyncpg.Connection) -> None:
    broken = {"a", "b"}
    [event] = await processed(conn, db_dsn, recording("a", "b", broken=broken), 1)

    assert await pgqueue.admin.discard(conn, handler="a") == [event]
    assert await states(conn) == {event: "dead"}  # b is still dead: retry can still reach it
    assert await pgqueue.admin.retry(conn) == [event]
    broken.clear()
    await run_burst(db_dsn, recording("a", "b", broken=broken))

    assert await runs(conn) == Counter({(event, "b"): 1})
    assert await states(conn) == {event: "discarded"}


@pytest.mark.parametrize(
    "command",
    [
        pytest.param(("replay", "--type", "t"), id="replay"),
        pytest.param(("retry", "--type", "t"), id="retry"),
        pytest.param(("discard", "--all"), id="discard"),
    ],
)
async def test_dry_run_and_refusal_touch_nothing(
    db_dsn: str, conn: asyncpg.Connection, command: tuple[str, ...]
) -> None:
    kind = {"replay": set(), "retry": {"a"}, "discard": {"a"}}[command[0]]
    await processed(conn, db_dsn, recording("a", broken=kind), 2)
    before = await conn.fetch("SELECT * FROM pgqueue.outbox ORDER BY id")
    args = (*command, "--dsn", db_dsn)

    dry = await cli(*args, "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.startswith("2 "), dry.stdout
    no_terminal = await cli(*args)
    assert_one_line_error(no_terminal, 2, "--yes")
    refused = await asyncio.to_thread(on_a_terminal, *args, answer="n")
    assert refused.returncode == 130, refused.stdout + refused.stderr
    assert "?" in refused.stdout and "aborted" in refused.stderr

    assert await conn.fetch("SELECT * FROM pgqueue.outbox ORDER BY id") == before
    assert await conn.fetchval("SELECT count(*) FROM pgqueue.replays") == 0


async def test_confirmation_yes_on_a_terminal_goes_ahead(
    db_dsn: str, conn: asyncpg.Connection
) -> None:
    ids = await processed(conn, db_dsn, recording("a", broken={"a"}), 2)
    result = await asyncio.to_thread(
        on_a_terminal, "discard", "--type", "t", "--dsn", db_dsn, answer="y"
    )
    assert result.returncode == 0, result.stderr
    assert await states(conn) == dict.fromkeys(ids, "discarded")


@pytest.mark.parametrize(
    "args, code, fragment",
    [
        pytest.param(("replay",), 2, "--type", id="replay-without-type"),
        pytest.param(("replay", "--type", "t", "--ids", "9..2"), 2, "'9..2' is an empty range",
                     id="backwards-range"),
        pytest.param(("retry", "--ids", "1-5"), 2, "'1-5' is not an id", id="bad-range"),
        pytest.param(("retry", "--all", "--since", "yesterday"), 2, "neither a time",
                     id="bad-since"),
        pytest.param(("discard", "--all", "--since", "1h", "--until", "2h"), 1,
                     "must be before --until", id="since-after-until"),
        pytest.param(("retry", "--handler", "*", "--yes"), 1, "not a handler name",
                     id="wildcard-handler"),
        pytest.param(("discard",), 2, "say which dead events to discard", id="discard-nothing"),
        pytest.param(("retry", "--ids", "9" * 20, "--yes"), 2, "ids are between 1 and",
                     id="id-beyond-bigint"),
        pytest.param(("replay", "--type", "t", "--since", "3000000d"), 2, "too long; at most",
                     id="since-before-year-1"),
        pytest.param(("replay", "--type", "t", "--batch-size", "0"), 2, "--batch-size",
                     id="batch-size-0"),
    ],
)  # fmt: skip
async def test_bad_input_is_one_line(
    db_dsn: str, args: tuple[str, ...], code: int, fragment: str
) -> None:
    assert_one_line_error(await cli(*args, "--dsn", db_dsn), code, fragment)


async def test_retry_discard_and_replay_select_by_ordering_key_and_queue(
    db_dsn: str, conn: asyncpg.Connection
) -> None:
    await conn.execute("CREATE TABLE public.runs (event_id bigint, handler text)")
    keyed = {
        key: [await pgqueue.enqueue(conn, "t", {}, ordering_key=key) for _ in range(2)]
        for key in ("k1", "k2")
    }
    plain = await pgqueue.enqueue(conn, "t", {}, queue="other")
    both = ("default", "other")
    await run_burst(db_dsn, recording("a", broken={"a"}), queues=both)
    assert set((await states(conn)).values()) == {"dead"}

    preview = await cli("retry", "--ordering-key", "k1", "--dry-run", "--dsn", db_dsn)
    assert preview.returncode == 0, preview.stderr
    assert "2 dead event(s) to retry" in preview.stdout
    result = await cli("discard", "--ordering-key", "k2", "--yes", "--dsn", db_dsn)
    assert result.returncode == 0, result.stderr
    assert "2 dead event(s) discarded" in result.stdout
    assert await pgqueue.admin.count_dead(conn, queue="other") == 1
    assert await pgqueue.admin.retry(conn, ordering_key="k1", queue="default") == keyed["k1"]
    assert await states(conn) == {
        **dict.fromkeys(keyed["k1"], "pending"),
        **dict.fromkeys(keyed["k2"], "discarded"),
        plain: "dead",
    }

    await run_burst(db_dsn, recording("a"), queues=both)
    plan = await pgqueue.admin.preview_replay(conn, "t", ordering_key="k1")
    assert (plan.to_replay, plan.skipped) == (2, {})
    replayed = await pgqueue.admin.replay(conn, "t", ordering_key="k1")
    assert replayed.replayed == 2
    with pytest.raises(pgqueue.errors.ConfigurationError, match="ordering key must be 1-200"):
        await pgqueue.admin.count_dead(conn, ordering_key="")
    bad = await cli("retry", "--ordering-key", "x" * 201, "--dsn", db_dsn)
    assert_one_line_error(bad, 1, "ordering key must be 1-200 characters")
