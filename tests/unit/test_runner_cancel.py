"""An operator's cancel reaches a running handler through Runners.cancel_runs (real runners,
real handler coroutines, no database): the call is cancelled, recorded as cancelled (not a
failure), queued units of the event are skipped, and the runner goes on with other events."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid
from typing import Any

import pgqueue
from pgqueue._queries import ClaimedRow
from pgqueue._registry import Handler
from pgqueue._worker.dispatch import Delivery, Kind, Outcome, finish
from pgqueue._worker.runner import Runners


def _delivery(event_id: int, event_type: str) -> Delivery:
    row = ClaimedRow(event_id, event_type, "{}", 1, None, dt.datetime.now(dt.UTC), 0.0, 0.0)
    return Delivery(row, uuid.uuid4(), claimed_at=time.monotonic(), records=None)


async def test_cancel_runs_cancels_the_call_skips_the_rest_and_the_runner_goes_on() -> None:
    started = asyncio.Event()
    cancelled_inside: list[int] = []
    registry = pgqueue.Registry()

    async def slow(payload: dict[str, Any], ctx: pgqueue.Context) -> None:
        started.set()
        try:
            await asyncio.Event().wait()  # never set: only a cancel ends it
        except asyncio.CancelledError:
            cancelled_inside.append(ctx.event_id)
            raise

    async def quick(payload: dict[str, Any], ctx: pgqueue.Context) -> None:
        return None

    registry.add("t.slow", slow, name="slow")
    registry.add("t.slow", quick, name="later")
    registry.add("t.quick", quick, name="quick")
    recorded: list[tuple[int, str, Outcome]] = []
    done = asyncio.Event()

    def record(d: Delivery, handler: Handler, outcome: Outcome) -> None:
        recorded.append((d.row.id, handler.name, outcome))
        if d.row.id == 2:
            done.set()

    runners = Runners(
        concurrency=1, record=record, stopping=lambda: False, pool=None, schema="pgqueue"
    )
    tasks = runners.start()
    try:
        blocked = _delivery(1, "t.slow")
        slow_h, later_h = registry.handlers_for("t.slow")
        runners.submit([(blocked, slow_h, 0, {}), (blocked, later_h, 0, {})])
        await asyncio.wait_for(started.wait(), 5)
        assert runners.cancel_runs() == 0  # nothing marked yet
        blocked.cancelled = True
        assert runners.cancel_runs() == 1
        other = _delivery(2, "t.quick")
        runners.submit([(other, registry.handlers_for("t.quick")[0], 0, {})])
        await asyncio.wait_for(done.wait(), 5)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    assert cancelled_inside == [1]
    kinds = [(event, name, o.kind) for event, name, o in recorded]
    assert kinds == [
        (1, "slow", Kind.CANCELLED),
        (1, "later", Kind.CANCELLED),  # queued behind it: skipped, never called
        (2, "quick", Kind.DONE),  # the same runner task goes on
    ]
    assert finish(blocked, registry.handlers_for("t.slow")).state == "cancelled"
