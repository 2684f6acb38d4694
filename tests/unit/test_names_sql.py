"""The naming rules and limits of pgqueue/_names.py, read against the text of sql/.

Each named CHECK (a table's or a domain's) is taken from the latest migration that defines it
(sql/0009 and 0010 turned the outbox's CHECKs into domains), so a migration that changes a rule
without pgqueue/_names.py (or the reverse) fails here, with no database. What the database
then accepts is tested value by value in tests/integration/test_names.py.
"""

from __future__ import annotations

import re
from pathlib import Path

from pgqueue import _names
from pgqueue._models import PRIORITY_MAX, PRIORITY_MIN

SQL = Path(__file__).resolve().parents[2] / "sql"
# CONSTRAINT name CHECK (...), the parentheses balanced by hand below.
_CONSTRAINT = re.compile(r"CONSTRAINT\s+(\w+)\s+CHECK\s*\(", re.S)


def _checks() -> dict[str, str]:
    """Every named CHECK's expression, from the latest migration defining it."""
    found: dict[str, str] = {}
    for path in sorted(SQL.glob("[0-9][0-9][0-9][0-9]_*.sql")):
        text = re.sub(r"--[^\n]*", "", path.read_text())
        for match in _CONSTRAINT.finditer(text):
            depth, end = 1, match.end()
            while depth:
                depth += {"(": 1, ")": -1}.get(text[end], 0)
                end += 1
            found[match.group(1)] = " ".join(text[match.end() : end - 1].split())
    return found


CHECKS = _checks()


def _between(name: str) -> tuple[int, int]:
    match = re.search(r"BETWEEN (-?\d+) AND (-?\d+)", CHECKS[name])
    assert match, CHECKS[name]
    return int(match.group(1)), int(match.group(2))


def _regex(name: str) -> str:
    match = re.search(r"~ '\^(.*?)\$'", CHECKS[name])
    assert match, CHECKS[name]
    return match.group(1)


def test_the_latest_definitions_are_the_domains() -> None:
    """sql/0009 and 0010 replaced the table CHECKs: the parser must see the domains' text."""
    assert "VALUE" in CHECKS["outbox_event_type_format"]
    assert "VALUE" in CHECKS["outbox_queue_format"]


def test_event_type_rule_and_length_match_the_domain() -> None:
    assert _between("outbox_event_type_length") == (1, _names.MAX_EVENT_TYPE)
    first, rest = re.fullmatch(
        r"(\[[^]]+\])(\[[^]]+\])\*", _regex("outbox_event_type_format")
    ).groups()  # type: ignore[union-attr]
    assert _names.EVENT_TYPE.pattern == f"{first}{rest}{{0,{_names.MAX_EVENT_TYPE - 1}}}"


def test_queue_rule_matches_the_domain() -> None:
    check = CHECKS["outbox_queue_format"]
    longest = int(re.search(r"char_length\(VALUE\) <= (\d+)", check).group(1))  # type: ignore[union-attr]
    first, rest = re.fullmatch(r"(\[[^]]+\])(\[[^]]+\])\*", _regex("outbox_queue_format")).groups()  # type: ignore[union-attr]
    assert _names.QUEUE.pattern == f"{first}{rest}{{0,{longest - 1}}}"


def test_schedule_name_rule_matches_the_table_check() -> None:
    assert _names.SCHEDULE_NAME.pattern == _regex("schedules_name_format")


def test_payload_size_matches_the_domain() -> None:
    size = re.search(r"octet_length\(VALUE::text\) <= (\d+)", CHECKS["outbox_payload_size"])
    assert size and int(size.group(1)) == _names.MAX_PAYLOAD_BYTES


def test_lengths_and_priorities_match_the_checks() -> None:
    assert _between("outbox_idempotency_key_length") == (1, _names.MAX_IDEMPOTENCY_KEY)
    assert _between("outbox_ordering_key_length") == (1, _names.MAX_ORDERING_KEY)
    assert _between("handler_limits_handler_length") == (1, _names.MAX_HANDLER_NAME)
    assert _between("outbox_priority_range") == (PRIORITY_MIN, PRIORITY_MAX)


def test_the_largest_event_id_is_the_outbox_id_type() -> None:
    """outbox.id is a bigint (sql/0001): the id every API and CLI option accepts at most."""
    outbox = (SQL / "0001_outbox.sql").read_text()
    assert re.search(r"^\s*id\s+bigint\b", outbox, re.M), "outbox.id is no longer a bigint"
    every = "".join(path.read_text() for path in SQL.glob("*.sql"))
    assert not re.search(r"ALTER COLUMN id\s+TYPE", every)
    assert _names.MAX_EVENT_ID == 2**63 - 1
