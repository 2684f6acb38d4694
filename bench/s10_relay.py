"""Figure 10 (issue 13): relay 20,000 pre-enqueued events to a broker with ONE worker process.

For each of NATS JetStream (file stream), Redis Streams and a RabbitMQ quorum queue, on the
machine's brokers: the relay's batch path (``registry.relay``) against the per-event baseline
measured in the same run (a plain handler awaiting one confirmed publish per event, the way
teams write it by hand), plus a no-op handler drain (the worker's own pace). events/s = events /
worker ``run()`` time. Each run then reads the broker back: exactly N messages, or it fails.
Every stream / queue / key is created for the run and deleted after.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from ._options import Bench, Figures
from ._proc import Child, scalar
from ._systems import DONE, PGQUEUE, REMAINING, prefill
from .relay_worker import AMQP_URL, NATS_URL, REDIS_URL

N = 20_000
BROKERS = ("nats", "redis", "rabbitmq")


@asynccontextmanager
async def destination(broker: str) -> AsyncIterator[tuple[str, Any]]:
    """A fresh subject+stream / stream key / quorum queue; yields (target, count())."""
    name = f"benchrelay{uuid.uuid4().hex[:10]}"
    if broker == "nats":
        import nats

        nc = await nats.connect(NATS_URL)
        js = nc.jetstream()
        await js.add_stream(name=name.upper(), subjects=[name])

        async def count_nats() -> int:
            return int((await js.stream_info(name.upper())).state.messages)

        try:
            yield name, count_nats
        finally:
            await js.delete_stream(name.upper())
            await nc.close()
    elif broker == "redis":
        import redis.asyncio as redis

        client = redis.Redis.from_url(REDIS_URL)

        async def count_redis() -> int:
            return int(await client.xlen(name))

        try:
            yield name, count_redis
        finally:
            keys = [k async for k in client.scan_iter(match=f"{{{name}}}:*", count=5000)]
            for i in range(0, len(keys), 5000):
                await client.delete(*keys[i : i + 5000])
            await client.delete(name)
            await client.aclose()
    else:
        import aiormq

        conn = await aiormq.connect(AMQP_URL)
        channel = await conn.channel()
        await channel.queue_declare(name, durable=True, arguments={"x-queue-type": "quorum"})

        async def count_rabbit() -> int:
            return int((await channel.queue_declare(name, passive=True)).message_count or 0)

        try:
            yield name, count_rabbit
        finally:
            await channel.queue_delete(name)
            await conn.close()


async def relay_once(bench: Bench, broker: str, mode: str) -> dict[str, Any]:
    """One drain on a fresh database; checked in the database and on the broker."""
    async with bench.db.fresh() as dsn, destination(broker) as (target, count):
        await prefill(PGQUEUE, dsn, N)
        args = ["--broker", broker, "--mode", mode, "--dsn", dsn, "--target", target]
        result = await (await Child("relay_worker", *args).start()).wait(timeout=900)
        remaining = await scalar(dsn, REMAINING[PGQUEUE])
        done = await scalar(dsn, DONE[PGQUEUE])
        held = await count() if mode != "noop" else N
        if remaining or done < N or held != N:
            raise RuntimeError(
                f"relay {broker} {mode}: {remaining} unfinished, {done} done, the broker holds "
                f"{held} messages; expected {N}"
            )
        result["rate"] = N / (result["run_end"] - result["run_start"])
        return result


async def run(bench: Bench) -> Figures:
    out: Figures = {}
    noop = await relay_once(bench, "nats", "noop")
    out["relay_noop"] = noop["rate"]
    for broker in BROKERS:
        for mode, key in (("batch", "relay_batch"), ("per-event", "relay_event")):
            result = await relay_once(bench, broker, mode)
            out[f"{key}.{broker}"] = result["rate"]
            out[f"{key}_cpu_us.{broker}"] = result["cpu_run_s"] / N * 1e6
    return out
