"""``Queries``: every area's statements and typed methods for one schema, built once per
schema by ``queries_for``."""

from __future__ import annotations

from functools import lru_cache

from .admin_calls import AdminCalls
from .core_calls import CoreCalls
from .limit_calls import LimitCalls
from .steer_calls import SteerCalls


@lru_cache(maxsize=32)
def queries_for(schema: str) -> Queries:
    """The statements for ``schema`` (immutable, so caching them is safe)."""
    return Queries(schema)


class Queries(CoreCalls, AdminCalls, SteerCalls, LimitCalls):
    """The statements of every area, with the schema filled in, and a method per statement
    (``Statements`` formats them; each area class adds its methods)."""
