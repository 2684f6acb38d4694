"""Every runtime SQL statement (DML), each directly above the one typed method that runs it.

One module per area: ``core`` (producer and worker), ``admin`` (status, prune, metrics'
depths, pgqueue.testing), ``steer`` (retry, discard, replay, events list / show), ``flow``
(cancel, reschedule, wait, pause), ``limits``, ``ordering`` (ordered handlers' gate, held-back
keys), ``rates`` (rate limits' token buckets), ``schedule``, ``presence`` and ``dashboard``.
A statement has one name end to end: the constant ``CLAIM`` is run by ``CoreQueries.claim``.
``Area`` (``_base``) fills the schema in once per schema (the only identifier, validated and
quoted), so the text stays fixed and asyncpg's statement cache prepares each statement once
per connection. Values are always bound parameters. ``queries_for`` builds every area for one
schema, once.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from .admin import AdminQueries, scratch_databases
from .core import PRIORITY_LEVELS, ClaimedRow, CoreQueries, database_now
from .dashboard import DashboardQueries
from .flow import FlowQueries
from .limits import LimitQueries
from .ordering import OrderingQueries
from .presence import PresenceQueries
from .rates import RateQueries
from .schedule import ScheduleQueries
from .steer import SelectionArgs, SteerQueries

__all__ = [
    "PRIORITY_LEVELS",
    "AdminQueries",
    "ClaimedRow",
    "CoreQueries",
    "DashboardQueries",
    "FlowQueries",
    "LimitQueries",
    "OrderingQueries",
    "PresenceQueries",
    "Queries",
    "RateQueries",
    "ScheduleQueries",
    "SelectionArgs",
    "SteerQueries",
    "database_now",
    "queries_for",
    "scratch_databases",
]


@dataclass(frozen=True, slots=True)
class Queries:
    """Every area's statements for one schema."""

    core: CoreQueries
    admin: AdminQueries
    steer: SteerQueries
    flow: FlowQueries
    limits: LimitQueries
    ordering: OrderingQueries
    rates: RateQueries
    schedule: ScheduleQueries
    presence: PresenceQueries
    dashboard: DashboardQueries


@lru_cache(maxsize=32)
def queries_for(schema: str) -> Queries:
    """The statements of ``schema`` (immutable, so caching them is safe)."""
    return Queries(
        core=CoreQueries(schema),
        admin=AdminQueries(schema),
        steer=SteerQueries(schema),
        flow=FlowQueries(schema),
        limits=LimitQueries(schema),
        ordering=OrderingQueries(schema),
        rates=RateQueries(schema),
        schedule=ScheduleQueries(schema),
        presence=PresenceQueries(schema),
        dashboard=DashboardQueries(schema),
    )
