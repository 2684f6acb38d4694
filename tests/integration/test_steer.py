"""Replay, retry and discard with real workers: who runs again is counted in a table the
handlers write (``runs``), and the ``pgqueue.once`` ledger is checked row by row."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator

import asyncpg
import pytest

import pgqueue
import pgqueue.admin
import pgqueue.errors
from tests.helpers import run_cli, wait_for
from tests.integration.core_support import handler_states, outbox_row, run_burst

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CLI = [sys.executable, "-c", "from pgqueue._cli.main import main; main()"]


def recording(
    *names: str, once: tuple[str, ...] = (), broken: set[str] | None = None
) -> pgqueue.Registry:
    """A registry for type 't' whose handlers insert (event, handler) into ``runs``.

    Handlers in ``once`` guard their insert with pgqueue.once (the ledger); handlers whose name
    is in ``broken`` raise Discard (dead at once) instead.
    """
    registry = pgqueue.Registry()
    for name in names:

        async def handler(payload: dict[str, object], ctx: pgqueue.Context) -> None:
            if broken is not None and ctx.handler in broken:
                raise pgqueue.Discard(f"{ctx.handler} is broken")
            async with ctx.pool.acquire() as c, c.transaction():
                if ctx.handler in once and not await pgqueue.once(c, ctx):
                    return
                await c.execute(
                    "INSERT INTO public.runs VALUES ($1, $2)", ctx.event_id, ctx.handler
                )

        registry.add("t", handler, name=name)
    return registry


async def runs(conn: asyncpg.Connection) -> Counter[tuple[int, str]]:
    rows = await conn.fetch("SELECT event_id, handler FROM public.runs")
    return Counter((r["event_id"], r["handler"]) for r in rows)


async def states(conn: asyncpg.Connection) -> dict[int, str]:
    rows = await conn.fetch("SELECT id, state FROM pgqueue.outbox ORDER BY id")
    return {r["id"]: r["state"] for r in rows}


async def processed(
    conn: asyncpg.Connection, db_dsn: str, registry: pgqueue.Registry, n: int
) -> list[int]:
    """Enqueue ``n`` events of type 't' and run a burst worker until they are processed."""
    await conn.execute("CREATE TABLE IF NOT EXISTS public.runs (event_id bigint, handler text)")
    ids = [await pgqueue.enqueue(conn, "t", {"n": i}) for i in range(n)]
    await run_burst(db_dsn, registry)
    return ids


# -- replay -----------------------------------------------------------------------------------


async def test_replay_to_every_handler_runs_all_again_and_clears_their_ledger(
    db_dsn: str, conn: asyncpg.Connection
) -> None:
    registry = recording("a", "b", once=("b",))
    ids = await processed(conn, db_dsn, registry, 3)
    other = await pgqueue.enqueue(conn, "other", {})
    assert await conn.fetchval("SELECT count(*) FROM pgqueue.effects") == 3

    result = await pgqueue.admin.replay(conn, "t")

    assert (result.replayed, result.total, result.resumed) == (3, 3, False)
    row = await outbox_row(conn, ids[0])
    assert (row["state"], row["attempt"], row["handlers"], row["processed_at"]) == (
        "pending",
        0,
        None,
        None,
    )
    assert await conn.fetchval("SELECT count(*) FROM pgqueue.effects") == 0
    await run_burst(db_dsn, registry)
    assert await runs(conn) == Counter({(i, h): 2 for i in ids for h in ("a", "b")})
    assert await states(conn) == {**dict.fromkeys(ids, "done"), other: "pending"}
    finished = await conn.fetchval("SELECT finished_at IS NOT NULL FROM pgqueue.replays")
    assert finished


async def test_replay_to_one_handler_runs_only_it_and_clears_only_its_ledger(
    db_dsn: str, conn: asyncpg.Connection
) -> None:
    registry = recording("a", "b", "c", once=("a", "b"))
    ids = await processed(conn, db_dsn, registry, 2)

    result = await pgqueue.admin.replay(conn, "t", handler="a", ids=[ids[0]])

    assert result.replayed == 1
    ledger = await conn.fetch("SELECT event_id, handler FROM pgqueue.effects ORDER BY 1, 2")
    assert [tuple(r) for r in ledger] == [(ids[0], "b"), (ids[1], "a"), (ids[1], "b")]
    await run_burst(db_dsn, registry)
    expected = Counter({(i, h): 1 for i in ids for h in ("a", "b", "c")})
    expected[(ids[0], "a")] = 2
    assert await runs(conn) == expected
    assert await states(conn) == dict.fromkeys(ids, "done")
    # The view shows the replayed handler and the wildcard that stands for the others.
    view = await handler_states(conn, ids[0])
    assert {h: (s["state"], s["attempts"]) for h, s in view.items()} == {
        "*": ("done", 0),
        "a": ("done", 1),
    }


async def test_replay_to_a_handler_registered_after_the_events_ran(
    db_dsn: str, conn: asyncpg.Connection
) -> None:
    ids = await processed(conn, db_dsn, recording("a"), 3)
    newer = recording("a", "late")
    await run_burst(db_dsn, newer)  # deploying a handler does not reach done events ...
    assert await runs(conn) == Counter({(i, "a"): 1 for i in ids})

    await pgqueue.admin.replay(
        conn, "t", handler="late", ids=[range(ids[1], ids[2] + 1)]
    )  # ...replay does
    await run_burst(db_dsn, newer)

    expected = Counter({(i, "a"): 1 for i in ids})
    expected.update({(ids[1], "late"): 1, (ids[2], "late"): 1})
    assert await runs(conn) == expected
    assert await states(conn) == dict.fromkeys(ids, "done")


async def test_interrupted_replay_resumes_without_replaying_twice(
    db_dsn: str, conn: asyncpg.Connection
) -> None:
    registry = recording("a")
    ids = await processed(conn, db_dsn, registry, 5)

    def stop_after_first_batch(done: int) -> None:
        raise KeyboardInterrupt  # what Ctrl-C does between two batches

    with pytest.raises(KeyboardInterrupt):
        await pgqueue.admin.replay(conn, "t", batch_size=2, progress=stop_after_first_batch)
    assert list((await states(conn)).values()) == ["pending"] * 2 + ["done"] * 3
    # Meanwhile a worker finishes the first batch and a new event: both processed after the
    # replay started, so the resumed replay picks neither.
    newer = await pgqueue.enqueue(conn, "t", {})
    await run_burst(db_dsn, registry)

    preview = await pgqueue.admin.preview_replay(conn, "t")
    assert (preview.id, preview.replayed_before, preview.to_replay) == (1, 2, 3)
    result = await pgqueue.admin.replay(conn, "t", batch_size=2)
    assert (result.id, result.replayed, result.total, result.resumed) == (1, 3, 5, True)
    await run_burst(db_dsn, registry)
    assert await runs(conn) == Counter({**{(i, "a"): 2 for i in ids}, (newer, "a"): 1})
    # Finished: the same command now starts a new replay of everything.
    assert (await pgqueue.admin.preview_replay(conn, "t")).id is None


async def test_replay_skips_events_that_are_not_done_and_refuses_a_transaction(
    db_dsn: str, conn: asyncpg.Connection
) -> None:
    registry = recording("a", broken={"a"})
    dead = (await processed(conn, db_dsn, registry, 1))[0]
    pending = await pgqueue.enqueue(conn, "t", {})

    preview = await pgqueue.admin.preview_replay(conn, "t")
    assert (preview.to_replay, preview.skipped) == (0, {"dead": 1, "pending": 1})
    assert (await pgqueue.admin.replay(conn, "t")).replayed == 0
    assert await states(conn) == {dead: "dead", pending: "pending"}
    async with conn.transaction():
        with pytest.raises(pgqueue.errors.ConfigurationError, match="outside a transaction"):
            await pgqueue.admin.replay(conn, "t")


@contextlib.contextmanager
def cli_process(*args: str) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [*CLI, *args], cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)


async def test_cli_replay_interrupted_after_one_batch_resumes_on_rerun(
    db_dsn: str, conn: asyncpg.Connection
) -> None:
    registry = recording("a")
    ids = await processed(conn, db_dsn, registry, 6)
    # Hold the third event so the replay stops inside its second batch, after the first
    # batch committed; then interrupt it there, as an operator's Ctrl-C would.
    blocker = await asyncpg.connect(db_dsn)
    try:
        async with blocker.transaction():
            await blocker.execute("SELECT 1 FROM pgqueue.outbox WHERE id = $1 FOR UPDATE", ids[2])
            args = ("replay", "--type", "t", "--batch-size", "2", "--yes", "--dsn", db_dsn)
            with cli_process(*args) as proc:
                touched = "SELECT touched FROM pgqueue.replays"
                await wait_for(lambda: _equals(conn, touched, 2), 30, message="no first batch")
                waiting = (
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock'"
                )
                await wait_for(lambda: _equals(conn, waiting, 1), 30, message="never blocked")
                proc.send_signal(signal.SIGINT)  # Ctrl-C
                _, err = proc.communicate(timeout=30)
                assert proc.returncode == 130, err
                assert "run the same command again to resume it" in err
            await conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock'"
            )
            await wait_for(lambda: _equals(conn, waiting, 0), 30, message="backend survived")
    finally:
        await blocker.close()
    assert list((await states(conn)).values()) == ["pending"] * 2 + ["done"] * 4

    rerun = await asyncio.to_thread(run_cli, *args, cwd=ROOT)

    assert rerun.returncode == 0, rerun.stderr
    assert "resuming replay #1 (2 event(s) already replayed): 4 done t event(s)" in rerun.stdout
    assert "replay #1: 4 event(s) replayed to every handler" in rerun.stdout
    assert "replayed 4/4" in rerun.stderr  # progress, on stderr
    await run_burst(db_dsn, registry)
    assert await runs(conn) == Counter({(i, "a"): 2 for i in ids})


async def _equals(conn: asyncpg.Connection, query: str, value: int) -> bool:
    return bool(await conn.fetchval(query) == value)
