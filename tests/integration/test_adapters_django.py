"""pgqueue on Django's connections (settings configured here; no Django project needed)."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import django
import pytest
from django.conf import settings
from django.db import connection, connections, transaction

import pgqueue
from tests.integration.adapter_support import (
    INSERT_ORDER,
    check_rejections,
    committed_sync,
    create_orders,
    effect_ctx,
)

_ALIASES = itertools.count(1)


def _database(dsn: str) -> dict[str, Any]:
    url = urlsplit(dsn)
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": url.path.lstrip("/"),
        "USER": url.username or "",
        "PASSWORD": url.password or "",
        "HOST": url.hostname or "",
        "PORT": str(url.port or ""),
    }


@pytest.fixture
def alias(db_dsn: str) -> Iterator[str]:
    """A Django connection alias for this test's database (settings configured once per
    process; each test adds its own alias, and closes it at the end)."""
    if not settings.configured:
        settings.configure(DATABASES={"default": _database(db_dsn)}, INSTALLED_APPS=[], USE_TZ=True)
        django.setup()
    name = f"pgq{next(_ALIASES)}"
    filled = connections.configure_settings({"default": {}, name: _database(db_dsn)})
    connections.settings[name] = filled[name]  # with Django's defaults (ATOMIC_REQUESTS...)
    try:
        yield name
    finally:
        connections[name].close()
        del connections.settings[name]


def test_atomic_commit_rollback_savepoint_many_once(db_dsn: str, alias: str) -> None:
    asyncio.run(create_orders(db_dsn))
    conn = connections[alias]

    def order(n: int) -> None:
        with conn.cursor() as cursor:
            cursor.execute(INSERT_ORDER.format(n=n))

    with transaction.atomic(using=alias):
        order(1)
        first = pgqueue.enqueue_sync(conn, "order.placed", {"order": 1})
    with pytest.raises(RuntimeError), transaction.atomic(using=alias):
        order(2)
        pgqueue.enqueue_sync(conn, "order.placed", {"order": 2})
        raise RuntimeError("payment declined")
    with transaction.atomic(using=alias):
        order(3)
        pgqueue.enqueue_sync(conn, "order.placed", {"order": 3}, run_at=dt.datetime(2000, 1, 1))
        with pytest.raises(RuntimeError), transaction.atomic(using=alias):  # a savepoint
            order(4)
            pgqueue.enqueue_sync(conn, "order.placed", {"order": 4})
            raise RuntimeError("gift wrap failed")
    with transaction.atomic(using=alias):
        order(5)
        order(6)
        ids = pgqueue.enqueue_many_sync(
            conn,
            [
                pgqueue.Event(event_type="order.placed", payload={"order": 5}),
                pgqueue.Event(event_type="order.placed", payload={"order": 6}, queue="default"),
                pgqueue.Event(
                    event_type="order.placed", payload={"order": 6}, idempotency_key="o-6"
                ),
            ],
        )
        assert first < ids[0] < ids[1]
    with transaction.atomic(using=alias):
        assert pgqueue.once_sync(conn, effect_ctx(first))
        assert not pgqueue.once_sync(conn, effect_ctx(first))
    with pytest.raises(pgqueue.PayloadError), transaction.atomic(using=alias):
        check_rejections(pgqueue.enqueue_sync, conn)
        raise pgqueue.PayloadError("the checks above passed")  # roll the block back
    conn.close()
    ran, rows = committed_sync(db_dsn)
    assert ran == [1, 3, 5, 6, 6] and rows == [1, 3, 5, 6]  # order 6 twice: two events


def test_the_default_connection_proxy_and_autocommit(db_dsn: str, alias: str) -> None:
    """``django.db.connection`` (the default alias) works; outside ``atomic`` Django
    autocommits, and the event with it, like any other query."""
    asyncio.run(create_orders(db_dsn))
    default = connections["default"]
    default.close()
    default.settings_dict.update(_database(db_dsn))  # this test's database
    try:
        with connection.cursor() as cursor:
            cursor.execute(INSERT_ORDER.format(n=1))
        pgqueue.enqueue_sync(connection, "order.placed", {"order": 1})
        with pytest.raises(TypeError, match=r"enqueue\(\) was given a synchronous"):
            pgqueue.enqueue(connection, "order.placed", {"order": 2})
    finally:
        default.close()
    assert committed_sync(db_dsn) == ([1], [1])
