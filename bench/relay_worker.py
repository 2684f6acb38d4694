"""Subprocess: ONE pgqueue worker (burst) relaying the bench events to a broker, timed.

``python -m bench.relay_worker --broker nats|redis|rabbitmq --mode batch|per-event|noop
--dsn DSN --target NAME --out result.json``

- batch: ``registry.relay(...)``, the relay's batch path (pipelined publishes, confirms awaited
  together per claimed batch);
- per-event: the baseline a team writes by hand: a plain handler that publishes its event and
  awaits that one confirm (``js.publish``, ``XADD`` on one client, ``basic_publish`` with
  confirms + mandatory); the runners overlap up to ``--concurrency`` of them;
- noop: a handler that does nothing (the worker's own pace on this machine).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import resource
import time
from pathlib import Path
from typing import Any

import pgqueue
import pgqueue.relay

from ._systems import EVENT_TYPE

NATS_URL = "nats://127.0.0.1:4222"
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
REDIS_URL = "redis://127.0.0.1:6379/0"


def relay(broker: str, target: str) -> pgqueue.relay.Relay:
    if broker == "nats":
        return pgqueue.relay.NatsRelay(NATS_URL, subject=target)
    if broker == "redis":
        return pgqueue.relay.RedisRelay(REDIS_URL, stream=target)
    return pgqueue.relay.RabbitMQRelay(AMQP_URL, routing_key=target)


async def per_event(broker: str, target: str, registry: pgqueue.Registry) -> Any:
    """Register the hand-written per-event publisher; return its client (to close)."""
    if broker == "nats":
        import nats

        nc = await nats.connect(NATS_URL)
        js = nc.jetstream()

        async def publish_nats(payload: dict[str, Any], ctx: pgqueue.Context) -> None:
            body = json.dumps(payload).encode()
            await js.publish(target, body, headers={"Nats-Msg-Id": str(ctx.event_id)})

        registry.add(EVENT_TYPE, publish_nats)
        return nc
    if broker == "redis":
        import redis.asyncio as redis

        client = redis.Redis.from_url(REDIS_URL)

        async def publish_redis(payload: dict[str, Any], ctx: pgqueue.Context) -> None:
            await client.xadd(target, {"id": str(ctx.event_id), "payload": json.dumps(payload)})

        registry.add(EVENT_TYPE, publish_redis)
        return client
    import aiormq

    conn = await aiormq.connect(AMQP_URL)
    channel = await conn.channel(publisher_confirms=True, on_return_raises=True)

    async def publish_rabbit(payload: dict[str, Any], ctx: pgqueue.Context) -> None:
        props = aiormq.spec.Basic.Properties(delivery_mode=2, message_id=str(ctx.event_id))
        body = json.dumps(payload).encode()
        await channel.basic_publish(body, routing_key=target, properties=props, mandatory=True)

    registry.add(EVENT_TYPE, publish_rabbit)
    return conn


async def main(args: argparse.Namespace) -> dict[str, Any]:
    registry = pgqueue.Registry()
    client = None
    if args.mode == "batch":
        registry.relay(EVENT_TYPE, to=relay(args.broker, args.target))
    elif args.mode == "per-event":
        client = await per_event(args.broker, args.target, registry)
    else:

        async def noop(payload: dict[str, Any]) -> None:
            return None

        registry.add(EVENT_TYPE, noop)
    settings = pgqueue.WorkerSettings(burst=True, concurrency=args.concurrency)
    gc.collect()
    gc.freeze()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    cpu0 = usage.ru_utime + usage.ru_stime
    t0 = time.monotonic()
    stats = await pgqueue.Worker(args.dsn, registry, settings).run()
    t1 = time.monotonic()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    if client is not None:
        await (client.aclose() if args.broker == "redis" else client.close())
    return {
        "run_start": t0,
        "run_end": t1,
        "done": stats.done,
        "dead": stats.dead,
        "retried": stats.retried,
        "cpu_run_s": usage.ru_utime + usage.ru_stime - cpu0,
    }


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.relay_worker")
    p.add_argument("--broker", choices=["nats", "redis", "rabbitmq"], required=True)
    p.add_argument("--mode", choices=["batch", "per-event", "noop"], required=True)
    p.add_argument("--dsn", required=True)
    p.add_argument("--target", required=True)
    p.add_argument("--concurrency", type=int, default=100)
    p.add_argument("--out", required=True)
    return p.parse_args(argv)


if __name__ == "__main__":
    arguments = parse()
    Path(arguments.out).write_text(json.dumps(asyncio.run(main(arguments))))
