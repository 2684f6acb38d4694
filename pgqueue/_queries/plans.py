"""Driver-neutral statement plans, and the two pumps that run them.

The producer's typed calls (insert one event, insert a chunk, record an effect) are written
once, as generators ("plans"): each ``yield`` hands out one statement (in asyncpg's ``$n``
style) with its arguments and receives the rows it returned. A pump runs a plan on one
driver: :func:`run_async` with an awaitable ``fetch`` (asyncpg, psycopg's AsyncConnection,
SQLAlchemy's AsyncSession), :func:`run_sync` with a blocking one (psycopg's Connection,
SQLAlchemy's Session, Django). So the idempotency-key fallback and the id ordering exist once,
and no statement is copied per driver: :func:`pyformat` and :func:`named` rewrite the
placeholders for the drivers that want another parameter style (cached per statement).

A plan costs one generator per call, under 1 us, against the 50+ us of the round trip.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Generator, Sequence
from functools import lru_cache
from typing import Any, TypeVar

T = TypeVar("T")

Step = tuple[str, Sequence[Any]]  # statement ($n placeholders), arguments
Rows = Sequence[Sequence[Any]]  # the rows it returned; each row indexable by position
Plan = Generator[Step, Rows, T]
AsyncFetch = Callable[[str, Sequence[Any]], Awaitable[Rows]]
SyncFetch = Callable[[str, Sequence[Any]], Rows]


async def run_async(plan: Plan[T], fetch: AsyncFetch) -> T:
    """Run ``plan``, each statement through ``await fetch(statement, args)``."""
    rows: Rows | None = None
    error: Exception | None = None
    while True:
        try:  # a statement's error goes into the plan, where it was yielded
            step = plan.send(rows) if error is None else plan.throw(error)  # type: ignore[arg-type]
        except StopIteration as done:
            result: T = done.value
            return result
        try:
            rows, error = await fetch(*step), None
        except Exception as exc:
            error = exc


def run_sync(plan: Plan[T], fetch: SyncFetch) -> T:
    """Run ``plan``, each statement through ``fetch(statement, args)``."""
    rows: Rows | None = None
    error: Exception | None = None
    while True:
        try:  # a statement's error goes into the plan, where it was yielded
            step = plan.send(rows) if error is None else plan.throw(error)  # type: ignore[arg-type]
        except StopIteration as done:
            result: T = done.value
            return result
        try:
            rows, error = fetch(*step), None
        except Exception as exc:
            error = exc


# $n outside string literals: the planned statements hold no literal with a '$' (a unit test
# checks every one of them).
_PLACEHOLDER = re.compile(r"\$(\d+)")


@lru_cache(maxsize=128)
def pyformat(statement: str) -> str:
    """``statement`` with ``$n`` as ``%(pn)s`` (psycopg, Django's cursors); '%' doubled."""
    return _PLACEHOLDER.sub(r"%(p\1)s", statement.replace("%", "%%"))


@lru_cache(maxsize=128)
def named(statement: str) -> str:
    """``statement`` with ``$n`` as ``:pn`` (SQLAlchemy's ``text()``).

    Every other ':' is escaped (``\\:``), so a cast such as ``$2::jsonb`` does not read as a
    parameter named ``p2`` followed by one named ``jsonb``.
    """
    return _PLACEHOLDER.sub(r":p\1", statement.replace(":", "\\:"))


def by_name(args: Sequence[Any]) -> dict[str, Any]:
    """Positional arguments as the ``pn`` names :func:`pyformat` and :func:`named` use."""
    return {f"p{i}": value for i, value in enumerate(args, 1)}
