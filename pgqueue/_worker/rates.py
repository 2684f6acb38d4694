"""Per-handler rate limits shared by every worker, enforced in the database.

A handler registered with ``rate="100/s"`` (``/m``, ``/h``) runs at most that often across
every worker and host; with ``rate_per_key=True``, that often per ordering key (events without
a key share the handler's own bucket). The path of a rated unit:

- units of rated handlers wait here (:meth:`RateGate.take`, after the key order let them
  through when the handler is also ordered);
- the gate's task takes tokens for everything waiting in ONE round trip (RATES_TAKE in
  pgqueue/_queries/rates.py: a token bucket per (handler, key) row, refilled by elapsed time
  on the database clock, locked while taken so no token is spent twice);
- a unit that got a token runs (then meets the concurrency limit, if any). The others are
  recorded ``Kind.DEFERRED`` (no attempt used) with the delay after which their bucket will
  hold a token for them: the n-th unit without a token waits n / rate seconds, so a backlog
  comes back spread at the rate instead of all at once.

Accuracy: tokens are spent when a run is let through, so a run deferred afterwards by a full
concurrency limit wastes its token (rate and concurrency on one handler: the rate is an upper
bound). Over a minute, runs stay within one second's burst of rate x 60.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from typing import Any

from .._errors import ConfigurationError
from .._names import rate_problem
from .._queries import queries_for
from .._queries.rates import RateQueries
from .._registry import Handler
from .._settings import DEFAULT_SCHEMA
from .dispatch import Delivery, Outcome
from .gate import Gate
from .runner import Unit

# A unit never waits longer than this for its token: an operator's new rate (pgqueue limits
# --rate) reaches a backlog deferred under the old one within CAP seconds. The price: a run
# waiting behind a slow rate (1/h) costs a claim and a completion every CAP seconds.
CAP = 30.0
# Deferred units come back a little apart (a random factor) so that the workers do not all
# claim them in the same instant.
SPREAD = 0.1


async def override_rate(
    conn: Any, handler: str, rate: str | None, *, schema: str = DEFAULT_SCHEMA
) -> None:
    """Set the operator's rate for ``handler`` (None: back to the registry's). Takes effect at
    the next take of every worker."""
    if rate is not None and (problem := rate_problem(rate)) is not None:
        raise ConfigurationError(f"rate of {handler!r} {problem}")
    if not await queries_for(schema).rates.rate_override(conn, handler, rate):
        raise ConfigurationError(
            f"handler {handler!r} has no rate limit or concurrency limit (no worker registered "
            f"it with rate=... or concurrency=N yet); see them with: pgqueue limits"
        )


class RateGate(Gate):
    """Takes tokens for the rated units of one worker; defers those that get none."""

    name = "rate gate"
    what = "taking rate-limit tokens"

    def __init__(
        self,
        *,
        pool: Any,
        queries: RateQueries,
        per_key: dict[str, bool],
        admit: Callable[[list[Unit]], None],
        record: Callable[[Delivery, Handler, Outcome], None],
    ) -> None:
        super().__init__(pool=pool, admit=admit, record=record)
        self._queries = queries
        self._per_key = per_key

    async def setup(self, conn: Any, rates: dict[str, str]) -> None:
        """Write the registry's rates (the operator's overrides stay)."""
        names = sorted(rates)
        await self._queries.rates_write(
            conn, names, [rates[n] for n in names], [self._per_key[n] for n in names]
        )

    def wants(self, delivery: Delivery, handler: Handler) -> bool:
        """Handlers with a rate."""
        return handler.rate is not None

    def _bucket(self, unit: Unit) -> tuple[str, str]:
        delivery, handler, _, _ = unit
        key = delivery.row.ordering_key if self._per_key.get(handler.name) else None
        return handler.name, key or ""

    async def decide(self, conn: Any, waiting: list[Unit]) -> dict[int, float]:
        """One take for every bucket; the oldest units of a bucket get its tokens."""
        wanted = Counter(self._bucket(u) for u in waiting)
        buckets = sorted(wanted)  # one lock order for every worker: no deadlock
        got = await self._queries.rates_take(
            conn, [b[0] for b in buckets], [b[1] for b in buckets], [wanted[b] for b in buckets]
        )
        seen: Counter[tuple[str, str]] = Counter()
        deferred: dict[int, float] = {}
        for i, unit in enumerate(waiting):
            bucket = self._bucket(unit)
            granted, rate, left = got.get(bucket, (wanted[bucket], 0.0, 0.0))  # no rate: run
            n = seen[bucket]
            seen[bucket] += 1
            if n < granted:
                continue
            # The (n - granted + 1)-th unit without a token: its token is that far away.
            behind = n - granted + 1 - left
            delay = max(0.0, behind) / rate if rate > 0 else 1.0
            deferred[i] = min(CAP, max(0.01, delay)) * random.uniform(1.0, 1.0 + SPREAD)
        return deferred
