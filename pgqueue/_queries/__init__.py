"""Every runtime SQL statement (DML), and one small typed function per statement.

The SQL text is built once per schema (the only identifier, validated and quoted) and then
stays fixed, so asyncpg's statement cache prepares each statement once per connection.
Values are always bound parameters. One package, split by area: ``core`` (producer and
worker), ``admin`` (status, prune, metrics' depths, pgqueue.testing), ``steer`` (retry,
discard, replay, events list / show), ``limits``, ``schedule``. ``statements`` fills the schema
into those of the first four, ``core_calls``, ``admin_calls``, ``steer_calls`` and
``limit_calls`` add each area's typed methods, and ``queries`` joins them in ``Queries``.
"""

from .admin import scratch_databases
from .core import PRIORITY_LEVELS
from .core_calls import ClaimedRow
from .queries import Queries, queries_for
from .schedule import ScheduleQueries, database_now, schedule_queries_for
from .steer_calls import SelectionArgs

__all__ = [
    "PRIORITY_LEVELS",
    "ClaimedRow",
    "Queries",
    "ScheduleQueries",
    "SelectionArgs",
    "database_now",
    "queries_for",
    "schedule_queries_for",
    "scratch_databases",
]
