"""A handlers module whose schedule has a bad cron expression: importing it must fail with
one clear line (tests/integration/test_schedule.py)."""

from __future__ import annotations

import pgqueue

registry = pgqueue.Registry()
registry.schedule("*/5 * * *", "report.daily", name="daily-report")
