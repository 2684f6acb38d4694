"""The producer's statements in the parameter styles of psycopg/Django and SQLAlchemy."""

from __future__ import annotations

import re

import pytest

from pgqueue._queries import queries_for
from pgqueue._queries.plans import by_name, named, pyformat

PLANNED = (
    "INSERT_ONE",
    "INSERT_ONE_HEADERS",
    "IDS_BY_KEYS",
    "INSERT_MANY",
    "INSERT_MANY_HEADERS",
    "INSERT_PLAIN",
    "RECORD_EFFECT",
)


@pytest.mark.parametrize("name", PLANNED)
def test_every_placeholder_is_rewritten_and_nothing_else(name: str) -> None:
    statement = getattr(queries_for("pgqueue").core, name)
    numbers = sorted({int(n) for n in re.findall(r"\$(\d+)", statement)})
    assert numbers == list(range(1, len(numbers) + 1))
    assert "'" not in statement  # no literal that could hold a '$' or ':' of its own
    as_pyformat, as_named = pyformat(statement), named(statement)
    assert "$" not in as_pyformat and "$" not in as_named
    assert sorted(set(re.findall(r"%\(p(\d+)\)s", as_pyformat)), key=int) == [
        str(n) for n in numbers
    ]
    # SQLAlchemy reads ':name' not preceded by ':' or '\' as a parameter: only ours remain.
    params = re.findall(r"(?<![:\w\\]):(\w+)(?!:)", as_named)
    assert sorted(set(params), key=lambda p: int(p[1:])) == [f"p{n}" for n in numbers]
    assert as_named.replace("\\:", ":").replace(":p", "$") == statement


def test_by_name_numbers_from_one() -> None:
    assert by_name(["a", None, 3]) == {"p1": "a", "p2": None, "p3": 3}
