"""Handlers for the fault tests; workers load ``tests.faults.fault_handlers:registry``.

Every invocation is logged, and every effect recorded, so a test counts executions and effects
separately:

- ``fault_log``: one row per invocation (event id, handler, worker pid, ctx.attempt), written
  and committed first thing, before any fault (so a run that is killed still counts).
- ``fault_effects``: one row per (event, handler), written through :func:`pgqueue.once` in the
  same transaction as the ledger row: the primary key proves an effect never happened twice,
  and ``pgqueue.effects`` agrees with it row for row.

Event types (all handlers share :func:`_run`; they differ in name, timeout and retry policy):

- ``fault``: one handler ``a``; timeout 30 s; 3 attempts, 0.1 s apart (in process).
- ``fault.timeout``: one handler ``a``; timeout 0.5 s; 3 attempts, 0.1 s apart.
- ``fault.multi``: three handlers ``h1``, ``h2``, ``h3``; timeout 30 s; 20 attempts with short
  exponential backoff (survives worker kills and a server restart).
- ``fault.block``: one handler ``a``; timeout 1 s; 3 attempts, 0.1 s apart (for ``"block"``).
- ``fault.model``: one handler ``m`` (like ``a``) whose payload model :class:`Hostile` has a
  validator that raises the exception class named by ``"validator_raises"`` (a builtin name,
  e.g. ``"RuntimeError"`` or ``"SystemExit"``), with the message ``"validator blew up"``.

The payload steers what a run does, in this order (unknown keys are ignored):

1. ``"faulty_runs": n``: the faults below apply only to the first ``n`` invocations of this
   (event, handler), counted in ``fault_log`` (default: every invocation). So ``{"sleep": 30,
   "faulty_runs": 1}`` sleeps the first time only and the re-delivery runs at once.
2. ``"suicide": true``: SIGKILL its own worker process (every faulty run).
3. ``"sleep": s``: ``await asyncio.sleep(s)`` (a long but well-behaved handler);
   ``"run_sleep": [s1, s2, ...]``: sleep ``s1`` on the first run, ``s2`` on the second...
   (applies to every run, whatever ``faulty_runs`` says).
4. ``"hang": true``: ``await asyncio.sleep(3600)`` (exceeds any handler timeout).
5. ``"block": s``: ``time.sleep(s)``: blocks the worker's event loop.
6. ``"fail": "always"``: raise RuntimeError (naming the run number); ``"discard": true``: raise
   :class:`pgqueue.Discard` (dead at once); ``"raise": "SystemExit"``: raise that builtin
   exception class (any BaseException: ``KeyboardInterrupt``, ``GeneratorExit`` ...) with the
   message ``"handler raised"`` (``SystemExit`` gets the code 2, as argparse exits).
7. The effect: ``fault_effects`` row through ``pgqueue.once``, committed.
8. ``"crash_after_effect": true``: SIGKILL its own worker process after the effect committed,
   before the worker can record the completion.
"""

from __future__ import annotations

import asyncio
import builtins
import os
import signal
import time
from typing import Any

import asyncpg
from pydantic import BaseModel, field_validator
from tenacity import stop_after_attempt, wait_exponential, wait_fixed

import pgqueue

TABLES = """
CREATE TABLE IF NOT EXISTS fault_log (
    id       bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id bigint NOT NULL,
    handler  text NOT NULL,
    pid      integer NOT NULL,
    attempt  integer NOT NULL,
    at       timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE TABLE IF NOT EXISTS fault_effects (
    event_id bigint NOT NULL,
    handler  text NOT NULL,
    pid      integer NOT NULL,
    attempt  integer NOT NULL,
    at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (event_id, handler)
);
"""

LOG_RUN = """
WITH logged AS (
    INSERT INTO fault_log (event_id, handler, pid, attempt) VALUES ($1, $2, $3, $4)
)
SELECT count(*) + 1 FROM fault_log WHERE event_id = $1 AND handler = $2
"""

QUICK = pgqueue.RetryPolicy(stop=stop_after_attempt(3), wait=wait_fixed(0.1))
PATIENT = pgqueue.RetryPolicy(
    stop=stop_after_attempt(20), wait=wait_exponential(multiplier=0.1, max=2)
)


async def create_tables(conn: asyncpg.Connection) -> None:
    """Create ``fault_log`` and ``fault_effects`` (idempotent)."""
    await conn.execute(TABLES)


def _kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


async def _run(payload: dict[str, Any], ctx: pgqueue.Context) -> None:
    assert ctx.pool is not None
    async with ctx.pool.acquire() as conn:
        run = await conn.fetchval(LOG_RUN, ctx.event_id, ctx.handler, os.getpid(), ctx.attempt)
    faulty = run <= payload.get("faulty_runs", run)
    if faulty and payload.get("suicide"):
        _kill_self()
    run_sleep = payload.get("run_sleep", [])
    if run <= len(run_sleep):
        await asyncio.sleep(float(run_sleep[run - 1]))
    if faulty:
        if payload.get("sleep"):
            await asyncio.sleep(float(payload["sleep"]))
        if payload.get("hang"):
            await asyncio.sleep(3600)
        if payload.get("block"):
            time.sleep(float(payload["block"]))  # noqa: ASYNC251 (the fault under test)
        if payload.get("fail") == "always":
            raise RuntimeError(f"fault: run {run} of {ctx.handler} fails")
        if payload.get("discard"):
            raise pgqueue.Discard(f"fault: run {run} of {ctx.handler} discarded")
        if payload.get("raise"):
            raise _builtin_exception(payload["raise"], "handler raised")
    async with ctx.pool.acquire() as conn, conn.transaction():
        if await pgqueue.once(conn, ctx):
            await conn.execute(
                "INSERT INTO fault_effects (event_id, handler, pid, attempt) "
                "VALUES ($1, $2, $3, $4)",
                ctx.event_id,
                ctx.handler,
                os.getpid(),
                ctx.attempt,
            )
    if faulty and payload.get("crash_after_effect"):
        _kill_self()


def _builtin_exception(name: str, message: str) -> BaseException:
    cls = getattr(builtins, name)
    assert isinstance(cls, type) and issubclass(cls, BaseException), name
    return cls(2) if cls is SystemExit else cls(message)


class Hostile(BaseModel):
    """A payload model whose validator raises what the payload names (see the docstring)."""

    model_config = {"extra": "allow"}
    validator_raises: str | None = None

    @field_validator("validator_raises")
    @classmethod
    def _raise(cls, value: str | None) -> str | None:
        if value:
            raise _builtin_exception(value, "validator blew up")
        return value


async def _run_model(payload: Hostile, ctx: pgqueue.Context) -> None:
    await _run(payload.model_dump(), ctx)


def build_registry() -> pgqueue.Registry:
    """The registry the fault tests run (see the module docstring)."""
    registry = pgqueue.Registry()
    registry.add("fault", _run, name="a", retry=QUICK, timeout=30)
    registry.add("fault.timeout", _run, name="a", retry=QUICK, timeout=0.5)
    registry.add("fault.block", _run, name="a", retry=QUICK, timeout=1)
    registry.add("fault.model", _run_model, name="m", retry=QUICK, timeout=30)
    for name in ("h1", "h2", "h3"):
        registry.add("fault.multi", _run, name=name, retry=PATIENT, timeout=30)
    return registry


registry = build_registry()
