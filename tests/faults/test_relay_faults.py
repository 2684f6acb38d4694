"""Relays under faults, with brokers of the test's own (never the machine's services):

- a private nats-server / redis-server (AOF) killed with -9 mid-run and restarted on the same
  data: nothing lost, nothing dead, and dedupe leaves exactly N messages;
- RabbitMQ cut off through a TCP proxy the test owns, for longer than the relay's retry
  policy allows attempts: every event waits (deferred, no attempt spent), none dead, all
  relayed after; the outage shows in the broker-up metric while it lasts;
- the relay worker (``pgqueue relay``) killed with -9 mid-batch: a second one finishes and
  NATS's dedupe leaves exactly N.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import asyncpg
import tenacity
from prometheus_client import generate_latest

import pgqueue
import pgqueue.relay
from pgqueue import Registry, Worker, WorkerSettings
from pgqueue.relay import NatsRelay, RabbitMQRelay, RedisRelay
from tests.faults.conftest import CLI, ROOT
from tests.helpers import wait_for
from tests.integration.relay_support import (
    AMQP_URL,
    NATS_URL,
    Private,
    Proxy,
    check_exactly,
    counts,
    enqueue_n,
    nats_stream,
    rabbit_queue,
    read_nats,
    read_rabbit,
    read_redis,
    stored,
    unique,
)

N = 5000
DEFERRED = "SELECT count(*) FROM pgqueue.outbox WHERE (handlers -> $1 ->> 'deferred')::int > 0"
# Two attempts only: an outage that spent attempts would send events dead at once.
STRICT = pgqueue.RetryPolicy(stop=tenacity.stop_after_attempt(2))


def settings() -> WorkerSettings:
    return WorkerSettings(lease_seconds=2, poll_interval=0.2, rescue_interval=0.3, concurrency=20)


@contextlib.asynccontextmanager
async def running(worker: Worker) -> AsyncIterator[Worker]:
    """The worker on a task of this test, stopped (and awaited) at the end."""
    task = asyncio.create_task(worker.run())
    try:
        yield worker
    finally:
        worker.request_stop()
        worker.request_stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 30)


def all_done(conn: asyncpg.Connection, n: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return bool(await counts(conn) == {"done": n})

    return check


def at_least(read: Callable[[], Awaitable[int]], n: int) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return await read() >= n

    return check


async def kill_and_restart(
    conn: asyncpg.Connection,
    db_dsn: str,
    server: Private,
    relay: pgqueue.relay.Relay,
    in_broker: Callable[[], Awaitable[int]],
) -> None:
    """Relay N events; kill -9 the broker once 500 are in; restart it once the outage has
    deferred events; wait for every event done; none dead."""
    await enqueue_n(conn, "order.placed", N)
    registry = Registry()
    (handler,) = registry.relay("order.placed", to=relay, retry=STRICT)
    async with running(Worker(db_dsn, registry, settings())):
        await wait_for(at_least(in_broker, 500), 30, message="nothing relayed")
        server.kill()

        async def deferred() -> bool:
            return bool(await conn.fetchval(DEFERRED, handler.name))

        await wait_for(deferred, 30, message="the outage deferred nothing")
        await server.start()
        await wait_for(all_done(conn, N), 90, message="not everything relayed")
    assert await conn.fetchval("SELECT count(*) FROM pgqueue.outbox WHERE state = 'dead'") == 0


async def test_nats_killed_and_restarted_loses_nothing(
    conn: asyncpg.Connection, db_dsn: str, tmp_path: Path
) -> None:
    import nats

    server = Private.nats(tmp_path)
    await server.start()
    url = f"nats://127.0.0.1:{server.port}"
    try:
        async with nats_stream(url, ["killtest.>"]) as stream:

            async def in_stream() -> int:
                nc = await nats.connect(url)
                try:
                    return int((await nc.jetstream().stream_info(stream)).state.messages)
                finally:
                    await nc.close()

            relay = NatsRelay(url, subject="killtest.{event_type}")
            await kill_and_restart(conn, db_dsn, server, relay, in_stream)
            check_exactly(await read_nats(url, stream), await stored(conn, "order.placed"))
    finally:
        server.kill()


async def test_redis_aof_killed_and_restarted_loses_nothing(
    conn: asyncpg.Connection, db_dsn: str, tmp_path: Path
) -> None:
    import redis.asyncio as redis

    server = Private.redis(tmp_path, aof=True)
    await server.start()
    url = f"redis://127.0.0.1:{server.port}/0"
    key = "killtest:order.placed"
    try:

        async def in_stream() -> int:
            client = redis.Redis.from_url(url)
            try:
                return int(await client.xlen(key))
            finally:
                await client.aclose()

        relay = RedisRelay(url, stream="killtest:{event_type}")
        await kill_and_restart(conn, db_dsn, server, relay, in_stream)
        check_exactly(await read_redis(url, key), await stored(conn, "order.placed"))
    finally:
        server.kill()


async def test_rabbitmq_cut_off_waits_without_attempts_then_relays_all(
    conn: asyncpg.Connection, db_dsn: str
) -> None:
    n = 2000
    proxy = Proxy(5672)
    await proxy.start()
    url = f"amqp://guest:guest@127.0.0.1:{proxy.port}/"
    metrics = pgqueue.Metrics()
    try:
        async with rabbit_queue(AMQP_URL) as queue:
            await enqueue_n(conn, "order.placed", n)
            registry = Registry()
            relay = RabbitMQRelay(url, routing_key=queue, confirm_timeout=2)
            registry.relay("order.placed", to=relay, retry=STRICT)

            async def in_queue() -> int:
                import aiormq

                c = await aiormq.connect(AMQP_URL)
                try:
                    ch = await c.channel()
                    return int((await ch.queue_declare(queue, passive=True)).message_count)
                finally:
                    await c.close()

            async def scrape() -> str:
                return (await asyncio.to_thread(generate_latest, metrics.registry)).decode()

            worker = Worker(db_dsn, registry, settings(), metrics=metrics)
            async with running(worker):
                await wait_for(at_least(in_queue, 200), 30, message="nothing relayed")
                await proxy.cut()

                async def deferred_often() -> bool:
                    # more deferrals than the policy has attempts: had they been attempts,
                    # events would be dead by now
                    return bool(await conn.fetchval(
                        "SELECT count(*) FROM pgqueue.outbox "
                        "WHERE (handlers -> 'relay-rabbitmq' ->> 'deferred')::int >= 3"
                    ))  # fmt: skip

                await wait_for(deferred_often, 60, message="the outage deferred nothing")
                assert 'pgqueue_relay_broker_up{relay="relay-rabbitmq"} 0.0' in await scrape()
                await proxy.start()
                await wait_for(all_done(conn, n), 90, message="not everything relayed")
                assert 'pgqueue_relay_broker_up{relay="relay-rabbitmq"} 1.0' in await scrape()
            got = await read_rabbit(AMQP_URL, queue)
        # RabbitMQ has no broker-side dedupe: a confirm lost with the connection can leave a
        # duplicate (same message_id) for the consumer to drop; every event is there.
        want = await stored(conn, "order.placed")
        assert {g.event_id for g in got} == set(want)
        assert all(g.payload == want[g.event_id] for g in got)
        dedup = list({g.msg_id: g for g in got}.values())
        check_exactly(dedup, want)
        attempts = await conn.fetch(
            "SELECT (handlers -> 'relay-rabbitmq' ->> 'attempts')::int FROM pgqueue.outbox "
            "WHERE handlers IS NOT NULL"
        )
        assert all(a[0] <= 2 for a in attempts)
    finally:
        await proxy.close()


def _relay_process(dsn: str, stream_prefix: str, log: Path) -> subprocess.Popen[bytes]:
    args = ["relay", NATS_URL, "--dsn", dsn, "--type", "order.placed",
            "--subject", stream_prefix + ".{event_type}", "--lease", "1", "--heartbeat", "0.3",
            "--rescue-interval", "0.2", "--poll-interval", "0.2",
            "--batch-size", "500"]  # fmt: skip
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-c", CLI, *args],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )


async def test_relay_worker_killed_mid_batch_dedupe_leaves_exactly_n(
    conn: asyncpg.Connection, db_dsn: str, tmp_path: Path
) -> None:
    n = 20_000
    prefix = unique("relaykill.")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        async with nats_stream(NATS_URL, [f"{prefix}.>"]) as stream:
            await enqueue_n(conn, "order.placed", n)

            procs.append(_relay_process(db_dsn, prefix, tmp_path / "relay1.log"))

            async def mid_batch() -> bool:
                # Some events relayed and a claimed batch in flight: kill now. (Waiting on the
                # stream's count instead lagged behind a fast relay: at 16,000 events/s on a
                # quiet machine it had finished all 20,000 before the kill.)
                done, running = await conn.fetchrow(
                    "SELECT count(*) FILTER (WHERE state = 'done'), "
                    "count(*) FILTER (WHERE state = 'running') FROM pgqueue.outbox"
                )
                return bool(done >= 1000 and running > 0)

            await wait_for(mid_batch, 60, interval=0.005, message="nothing relayed")
            os.kill(procs[0].pid, signal.SIGKILL)
            procs[0].wait(10)
            running_rows = await conn.fetchval(
                "SELECT count(*) FROM pgqueue.outbox WHERE state = 'running'"
            )
            procs.append(_relay_process(db_dsn, prefix, tmp_path / "relay2.log"))
            await wait_for(all_done(conn, n), 120, message=(tmp_path / "relay2.log").read_text())
            got = await read_nats(NATS_URL, stream)
            check_exactly(got, await stored(conn, "order.placed"))
            assert running_rows > 0, "the kill came after the last claim: nothing was tested"
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
