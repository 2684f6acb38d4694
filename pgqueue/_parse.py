"""Parsing what operators type, for the CLI and the dashboard alike: durations, times, time
bounds, event ids and id ranges; and ages for humans.

Errors are click.BadParameter (click is a core dependency): one clear line the CLI prints as a
usage error naming the option, and the dashboard shows as the form's error.
"""

from __future__ import annotations

import datetime as dt
import re

import click

from ._steer import MAX_ID, IdSpec

MAX_DURATION = 36_500 * 86_400.0  # seconds
DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*")


def parse_duration(text: str) -> float:
    """``500ms`` / ``30s`` / ``10m`` / ``2h`` / ``1d`` (a bare number is seconds) in seconds."""
    match = DURATION.fullmatch(text)
    if not match:
        raise click.BadParameter(f"{text!r} is not a duration; use e.g. 30s, 10m, 2h, 1d")
    factor = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2) or "s"]
    seconds = float(match.group(1)) * factor
    # A timedelta (and a time that long ago or ahead) must exist: 100 years is plenty.
    if not seconds <= MAX_DURATION:
        raise click.BadParameter(f"{text.strip()[:40]!r} is too long; at most 36500d")
    return seconds


def parse_run_at(text: str) -> dt.datetime:
    """An ISO 8601 time with a zone."""
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is not an ISO 8601 time; use e.g. 2026-12-01T09:00:00+00:00"
        ) from None
    if value.tzinfo is None:
        raise click.BadParameter(f"{text!r} has no time zone; add one, e.g. +00:00 or Z")
    return value


def parse_time_bound(text: str) -> dt.datetime | dt.timedelta:
    """``10m`` / ``2h`` / ``3d`` (that long ago) or an ISO 8601 time with a zone."""
    if DURATION.fullmatch(text):  # a duration: its own errors ("too long") stand
        return dt.timedelta(seconds=parse_duration(text))
    try:
        return parse_run_at(text)
    except click.BadParameter as exc:
        if "no time zone" in exc.message:
            raise
    raise click.BadParameter(
        f"{text!r} is neither a duration (e.g. 10m, 2h, 3d: that long ago) nor an ISO 8601 "
        "time with zone (e.g. 2026-12-01T09:00:00Z)"
    )


def format_age(seconds: float | None) -> str:
    """A duration in seconds for humans: 4.2s, 12.5m, 3.1h, 2.0d ('-' for None)."""
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.1f}m"
    if seconds < 172_800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


_RANGE = re.compile(r"\s*(\d+)\s*(?:\.\.\s*(\d+)\s*)?")


def id_number(text: str, option: str) -> int:
    """An event id typed by the user: within 1..2^63-1 (outbox.id is a bigint), checked
    before int() (which refuses over 4,300 digits with a traceback of its own)."""
    digits = text.strip().lstrip("0") or "0"
    if len(digits) > len(str(MAX_ID)) or not 1 <= int(digits) <= MAX_ID:
        raise click.BadParameter(
            f"{text.strip()[:30]!r} is not an event id; ids are between 1 and {MAX_ID}",
            param_hint=option,
        )
    return int(digits)


def parse_ids(texts: tuple[str, ...]) -> list[IdSpec] | None:
    """``--ids 7 --ids 10..20,31`` -> [7, range(10, 21), 31] (ranges inclusive)."""
    if not texts:
        return None
    ids: list[IdSpec] = []
    for part in ",".join(texts).split(","):
        match = _RANGE.fullmatch(part)
        if not match:
            raise click.BadParameter(
                f"{part.strip()!r} is not an id or an id range; use e.g. 42, 100..200 or 1..50,77",
                param_hint="'--ids'",
            )
        low = id_number(match.group(1), "'--ids'")
        high = id_number(match.group(2), "'--ids'") if match.group(2) else None
        if high is not None and high < low:
            raise click.BadParameter(
                f"{part.strip()!r} is an empty range; write the lower id first, e.g. 100..200",
                param_hint="'--ids'",
            )
        ids.append(range(low, high + 1) if high is not None else low)
    return ids
