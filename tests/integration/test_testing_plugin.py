"""pgqueue.testing as a user's test suite uses it: pytester runs a small suite of its own.

The inner suite runs in a child process (``runpytest_subprocess``) in pytester's own
directory, with its own pytest configuration (pytest-asyncio's strict mode), against our
server (``--pgqueue-dsn``), so nothing of this repository's conftest leaks into it. Each inner
test database name is written to a file, so we can check that every one was dropped.
"""

from __future__ import annotations

import re
from pathlib import Path

import asyncpg
import pytest

from tests.conftest import run_sync

pytest_plugins = ["pytester"]

INNER_CONFTEST = '''
import pytest
import re
from pathlib import Path

pytest_plugins = ["pgqueue.testing"]


@pytest.fixture(scope="session")
def pgqueue_setup():
    async def setup(conn):
        await conn.execute("CREATE TABLE emails (order_id int PRIMARY KEY)")
    return setup


@pytest.fixture(autouse=True)
def _record_databases(request):
    """Write down the databases each test used (the outer test checks they are gone)."""
    if "pgqueue_dsn" in request.fixturenames:
        dsn = request.getfixturevalue("pgqueue_dsn")
        template = request.getfixturevalue("pgqueue_databases").template
        with open(Path(__file__).parent / "databases.txt", "a") as out:
            out.write(dsn.rsplit("/", 1)[1] + "\\n" + template + "\\n")
'''

INNER_TESTS = """
import asyncpg
import pytest
from pydantic import BaseModel
from tenacity import stop_after_attempt, wait_none

import pgqueue
from pgqueue.testing import (
    assert_dead, assert_enqueued, assert_processed, drain, enqueued, refute_enqueued,
)

pytestmark = pytest.mark.asyncio
registry = pgqueue.Registry()


class OrderPlaced(BaseModel):
    order_id: int


@registry.on("order.placed")
async def send_email(order: OrderPlaced, ctx: pgqueue.Context) -> None:
    async with ctx.pool.acquire() as conn, conn.transaction():
        if await pgqueue.once(conn, ctx):
            await conn.execute("INSERT INTO emails VALUES ($1)", order.order_id)


TWICE = pgqueue.RetryPolicy(stop=stop_after_attempt(2), wait=wait_none())


@registry.on("order.placed", retry=TWICE)
async def charge(order: OrderPlaced, ctx: pgqueue.Context) -> None:
    if order.order_id == 13:
        raise ValueError("card declined")


async def place_order(conn, order_id):
    async with conn.transaction():
        return await pgqueue.enqueue(conn, "order.placed", {"order_id": order_id})


@pytest.mark.parametrize("run", [1, 2])
async def test_an_order_is_processed_in_a_database_of_its_own(pgqueue_conn, pgqueue_dsn, run):
    assert await enqueued(pgqueue_conn) == []
    event_id = await place_order(pgqueue_conn, 1)
    await assert_enqueued(pgqueue_conn, "order.placed", {"order_id": 1}, count=1, state="pending")
    await refute_enqueued(pgqueue_conn, "order.placed", {"order_id": 2})
    stats = await drain(pgqueue_dsn, registry)
    assert (stats.done, stats.dead) == (1, 0)
    await assert_processed(pgqueue_conn, event_id)
    assert await pgqueue_conn.fetchval("SELECT count(*) FROM emails") == 1


async def test_a_declined_card_is_dead_and_the_email_still_sent(pgqueue_conn, pgqueue_dsn):
    event_id = await place_order(pgqueue_conn, 13)
    await drain(pgqueue_dsn, registry)
    event = await assert_dead(pgqueue_conn, event_id, handler="charge", error="card declined")
    assert event.handlers["charge"].attempts == 2
    assert event.handlers["send_email"].state == "done"


async def test_in_process_with_the_test_database_as_ctx_pool(pgqueue_conn, pgqueue_dsn):
    async with asyncpg.create_pool(pgqueue_dsn, min_size=1, max_size=2) as pool:
        bus = pgqueue.InProcess(registry, pool=pool)
        event_id = await bus.publish("order.placed", {"order_id": 5})
        await assert_enqueued(bus, "order.placed", {"order_id": 5})
        await bus.drain()
    await assert_processed(bus, event_id)
    await refute_enqueued(pgqueue_conn, "order.placed")  # the outbox was not used
    assert await pgqueue_conn.fetchval("SELECT order_id FROM emails") == 5


async def test_must_fail_an_order_that_was_never_placed(pgqueue_conn):
    await place_order(pgqueue_conn, 1)
    await assert_enqueued(pgqueue_conn, "order.placed", {"order_id": 2})


async def test_must_fail_a_dead_event_is_not_processed(pgqueue_conn, pgqueue_dsn):
    event_id = await place_order(pgqueue_conn, 13)
    await drain(pgqueue_dsn, registry)
    await assert_processed(pgqueue_conn, event_id)
"""

INNER_INI = """
[pytest]
asyncio_default_fixture_loop_scope = function
"""

FAILURES = [
    "*AssertionError: expected an 'order.placed' event containing {'order_id': 2}, found 0;"
    " 'order.placed' events: #1 pending",
    "*AssertionError: event 1 (order.placed) is dead, not done;"
    " last error: charge: ValueError: card declined;"
    " handlers: charge dead after 2 attempt(s) (ValueError: card declined),"
    " send_email done after 1 attempt(s)",
]


@pytest.fixture
def user_suite(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    """A user's project using the plugin, with none of this run's pytest/xdist environment."""
    for name in (
        "PGQUEUE_TEST_DSN",
        "PYTEST_ADDOPTS",
        "PYTEST_XDIST_WORKER",
        "PYTEST_XDIST_WORKER_COUNT",
        "PYTEST_XDIST_TESTRUNUID",
    ):
        monkeypatch.delenv(name, raising=False)
    pytester.makeini(INNER_INI)
    pytester.makeconftest(INNER_CONFTEST)
    pytester.makepyfile(test_checkout=INNER_TESTS)
    return pytester


def _existing(admin_dsn: str, names: set[str]) -> list[str]:
    async def query() -> list[str]:
        conn = await asyncpg.connect(admin_dsn)
        try:
            rows = await conn.fetch(
                "SELECT datname FROM pg_database WHERE datname = ANY($1::text[])", list(names)
            )
        finally:
            await conn.close()
        return [r[0] for r in rows]

    return run_sync(query())


@pytest.mark.parametrize("workers", ["0", "2"])
def test_fixtures_and_assertions_in_a_users_suite(
    user_suite: pytest.Pytester, admin_dsn: str, workers: str
) -> None:
    result = user_suite.runpytest_subprocess(
        "--pgqueue-dsn", admin_dsn, "-n", workers, "-p", "no:cacheprovider", timeout=180
    )

    result.assert_outcomes(passed=4, failed=2)
    for failure in FAILURES:  # in any order (xdist reports them as they come)
        result.stdout.fnmatch_lines([failure])
    # The two failures are the two tests meant to fail, nothing else.
    failed = [line for line in result.outlines if line.startswith("FAILED ")]
    assert sorted(line.split(" ")[1].split("::")[1] for line in failed) == [
        "test_must_fail_a_dead_event_is_not_processed",
        "test_must_fail_an_order_that_was_never_placed",
    ]
    used = set((Path(user_suite.path) / "databases.txt").read_text().split())
    templates = {name for name in used if name.endswith("_tpl")}
    assert len(templates) == (1 if workers == "0" else 2)  # one per process (xdist worker)
    assert len(used - templates) == 6  # a database per test that asked for one
    assert _existing(admin_dsn, used) == []  # all dropped


def test_without_a_server_the_database_fixtures_fail_with_what_to_do(
    user_suite: pytest.Pytester,
) -> None:
    result = user_suite.runpytest_subprocess("-p", "no:cacheprovider", "-n", "0", timeout=120)

    result.assert_outcomes(errors=6)
    result.stdout.fnmatch_lines(
        [
            "*pgqueue.testing needs a PostgreSQL server: pass --pgqueue-dsn "
            "postgresql://user@host/postgres or set PGQUEUE_TEST_DSN (the role needs CREATEDB)"
        ]
    )
    assert "Traceback" not in result.stdout.str()


# -- the README's example (the checkout handlers of handlers/) --------------------------------

ROOT = Path(__file__).resolve().parents[2]


def readme_files() -> dict[str, str]:
    """The README's example files: the python blocks that start with ``# <file name>``."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Testing code that uses pgqueue", 1)[1].split("\n## ", 1)[0]
    files = {}
    for block in re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL):
        first = block.splitlines()[0]
        match = re.fullmatch(r"# (\w+\.py)\b.*", first)
        if match:
            files[match.group(1)] = block
    return files


def test_the_readme_example_tests_the_checkout_handlers(
    user_suite: pytest.Pytester, admin_dsn: str
) -> None:
    files = readme_files()
    assert sorted(files) == ["conftest.py", "test_checkout.py"]
    (user_suite.path / "test_checkout.py").unlink()  # the suite above: not this time
    user_suite.makeini(INNER_INI + f"pythonpath = {ROOT}\n")  # so that `handlers` imports
    for name, text in files.items():
        (user_suite.path / name).write_text(text)

    result = user_suite.runpytest_subprocess(
        "--pgqueue-dsn", admin_dsn, "-n", "0", "-p", "no:cacheprovider", timeout=120
    )

    result.assert_outcomes(passed=3)
