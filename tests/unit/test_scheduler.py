"""Schedule: validation at registration and the tick arithmetic (no database)."""

from __future__ import annotations

import datetime as dt

import pytest

import pgqueue
import pgqueue.errors

UTC = dt.UTC


def _at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text)


@pytest.mark.parametrize(
    ("expression", "now", "latest", "following"),
    [
        # On a tick: that tick is the latest (not the one before), the next is one period on.
        ("0 * * * *", "2026-03-01T10:00:00+00:00", "2026-03-01T10:00:00", "2026-03-01T11:00:00"),
        # Between ticks, with microseconds.
        ("0 * * * *", "2026-03-01T10:59:59.999+00:00", "2026-03-01T10:00:00",
         "2026-03-01T11:00:00"),
        # Seconds first (6 fields).
        ("*/10 * * * * *", "2026-03-01T10:00:05.5+00:00", "2026-03-01T10:00:00",
         "2026-03-01T10:00:10"),
        # A time zone other than UTC: 07:00 in Paris is 06:00 UTC in winter.
        ("0 7 * * *", "2026-01-15T12:00:00+00:00", "2026-01-15T06:00:00", "2026-01-16T06:00:00"),
    ],
)  # fmt: skip
def test_latest_and_next_tick(expression: str, now: str, latest: str, following: str) -> None:
    zone = "Europe/Paris" if expression == "0 7 * * *" else "UTC"
    schedule = pgqueue.Schedule(name="s", expression=expression, event_type="t", timezone=zone)
    assert schedule.latest_tick(_at(now)) == _at(latest).replace(tzinfo=UTC)
    assert schedule.next_tick(_at(now)) == _at(following).replace(tzinfo=UTC)


def test_daylight_saving_time_keeps_local_time() -> None:
    """07:00 in Paris is 05:00 UTC in summer: the day after the switch to summer time."""
    schedule = pgqueue.Schedule(
        name="s", expression="0 7 * * *", event_type="t", timezone="Europe/Paris"
    )
    assert schedule.next_tick(_at("2026-03-29T12:00:00+00:00")) == _at("2026-03-30T05:00:00+00:00")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"expression": "* * *"}, "invalid cron expression '\\* \\* \\*'"),
        ({"expression": "0 25 * * *"}, "invalid cron expression"),
        ({"timezone": "Nowhere/City"}, "unknown time zone"),
        ({"name": "has space"}, "schedule name"),
        ({"event_type": "bad type!"}, "event type"),
        ({"queue": "bad queue"}, "queue"),
        ({"priority": 40_000}, "priority"),
        ({"payload": {"tick": "mine"}}, "reserved"),
        ({"payload": {"when": object()}}, "JSON"),
    ],
)
def test_bad_schedules_raise_registry_error(kwargs: dict[str, object], message: str) -> None:
    fields: dict[str, object] = {"name": "s", "expression": "* * * * *", "event_type": "t"}
    with pytest.raises(pgqueue.errors.RegistryError, match=message):
        pgqueue.Schedule(**{**fields, **kwargs})  # type: ignore[arg-type]


def test_periodic_registers_a_handler_with_its_own_event_type() -> None:
    registry = pgqueue.Registry()

    @registry.periodic("*/5 * * * *", timezone="Europe/Paris", priority=3)
    async def cleanup(payload: dict[str, object]) -> None: ...

    (schedule,) = registry.schedules
    assert (schedule.name, schedule.event_type, schedule.timezone, schedule.priority) == (
        "cleanup", "periodic.cleanup", "Europe/Paris", 3,
    )  # fmt: skip
    assert [h.name for h in registry.handlers_for("periodic.cleanup")] == ["cleanup"]
