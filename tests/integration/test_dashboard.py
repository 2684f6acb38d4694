"""The dashboard in a real browser (Debian's chromium, driven by Playwright) against a real
``pgqueue dashboard`` server and real events: every page, a filter and its pages, retry end
to end, the other actions, read-only, authentication and CSRF refusals, and mounting."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import re
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from playwright.async_api import expect

import pgqueue
import pgqueue.admin
from tests.helpers import wait_for
from tests.integration.core_support import outbox_row, run_burst
from tests.integration.dashboard_handlers import registry, seed
from tests.integration.dashboard_support import (
    TOKEN,
    browser_page,
    dashboard_server,
    needs_chromium,
    screenshot_dir,
)

USER, PASSWORD = "alice", "correct horse battery"
BASIC_ENV = {"PGQUEUE_DASHBOARD_USER": USER, "PGQUEUE_DASHBOARD_PASSWORD": PASSWORD}


@pytest.fixture(autouse=True)
def _chromium() -> None:
    needs_chromium()


@pytest.fixture
async def seeded(db_dsn: str, conn: asyncpg.Connection) -> dict[str, Any]:
    """6 order.paid events dead (mail failed, crm done), 4 report.built done, one order.paid
    pending for later, a limit on mail, a late schedule."""
    await conn.execute("CREATE TABLE mail_down ()")
    await seed(conn)
    stats = await run_burst(db_dsn, registry, queues=("default", "reports"))
    assert stats.dead == 6 and stats.done == 4
    later = await pgqueue.enqueue(
        conn,
        "order.paid",
        {"order": 99, "email": "later@example.com"},
        run_at=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1),
    )
    await conn.execute(
        "INSERT INTO pgqueue.schedules (name, expression, timezone, event_type, payload, queue,"
        " priority, last_tick) VALUES ('hourly-digest', '0 * * * *', 'UTC', 'report.built',"
        " '{}', 'reports', 0, now() - interval '3 hours')"
    )
    dead = [
        r["id"]
        for r in await conn.fetch("SELECT id FROM pgqueue.outbox WHERE state = 'dead' ORDER BY id")
    ]
    done = [
        r["id"]
        for r in await conn.fetch("SELECT id FROM pgqueue.outbox WHERE state = 'done' ORDER BY id")
    ]
    return {"dead": dead, "done": done, "pending": later}


@pytest.fixture
async def live_worker(db_dsn: str) -> AsyncIterator[pgqueue.Worker]:
    """A running worker (listed on the Workers page), stopped after the test."""
    settings = pgqueue.WorkerSettings(queues=("default", "reports"), lease_seconds=10)
    worker = pgqueue.Worker(db_dsn, registry, settings)
    task = asyncio.create_task(worker.run())
    conn = await asyncpg.connect(db_dsn)
    try:

        async def listed() -> bool:
            return len(await pgqueue.admin.list_workers(conn)) == 1

        await wait_for(listed, message="the worker never registered")
        yield worker
    finally:
        await conn.close()
        worker.request_stop()
        await asyncio.wait_for(task, 30)


async def _shot(page: Any, folder: Path, name: str) -> None:
    path = folder / f"dashboard-{name}.png"
    await page.screenshot(path=str(path))
    assert path.stat().st_size > 5000  # a rendered page, not a blank one


async def test_every_page_against_real_data_read_only(
    db_dsn: str,
    conn: asyncpg.Connection,
    seeded: dict[str, Any],
    live_worker: pgqueue.Worker,
    tmp_path: Path,
) -> None:
    shots = screenshot_dir(tmp_path)
    async with dashboard_server(db_dsn, log=tmp_path / "server.log") as url, browser_page() as page:
        await page.goto(url + "/")
        overview = page.locator("#overview")
        assert "read-only" in await page.locator("header").inner_text()
        row = overview.locator("tr", has_text="order.paid")
        cells = await row.locator("td").all_inner_texts()
        # queue, type, pending, running, dead, done last minute, oldest ready
        assert cells[:5] == ["default", "order.paid", "1", "0", "6"]
        reports = (
            await overview.locator("tr", has_text="report.built").locator("td").all_inner_texts()
        )
        assert reports[:2] == ["reports", "report.built"] and reports[5] == "4"
        assert await page.locator("svg.chart rect[fill='#4299e1']").count() >= 1
        await _shot(page, shots, "overview")

        # The events list: all 11, then a filter chosen in the form, then its pages.
        await page.click("header >> text=Events")
        assert await page.locator("#events tr").count() == 1 + 11
        await page.select_option("select[name=state]", "dead")
        await page.fill("input[name=limit]", "4")
        await page.click("#apply-filters")
        await page.wait_for_url(re.compile(r"state=dead"))
        states = await page.locator("#events td:nth-child(4)").all_inner_texts()
        assert states == ["dead"] * 4
        first_ids = await page.locator("#events td:nth-child(1)").all_inner_texts()
        assert first_ids == [str(i) for i in sorted(seeded["dead"], reverse=True)[:4]]
        await page.click("#older")
        second_ids = await page.locator("#events td:nth-child(1)").all_inner_texts()
        assert second_ids == [str(i) for i in sorted(seeded["dead"], reverse=True)[4:]]
        assert await page.locator("text=no older events").count() == 1
        await page.goto(url + "/events?state=dead")
        await _shot(page, shots, "events")

        # One dead event: its handlers, their errors, no payload, no action.
        await page.click(f"#events a:text-is('{seeded['dead'][0]}')")
        handlers = await page.locator("#handlers").inner_text()
        assert "mail\tdead\t1" in handlers and "SMTP 421" in handlers
        assert "crm\tdone" in handlers
        assert await page.locator("#payload-hidden").count() == 1
        assert "customer" not in await page.content()
        assert await page.locator("#retry-event").count() == 0
        await _shot(page, shots, "event")

        await page.click("header >> text=Dead")
        group = (
            await page.locator("#dead-groups tr", has_text="mail").locator("td").all_inner_texts()
        )
        assert group[:4] == ["order.paid", "mail", "6", "6"]
        assert (
            group[4].startswith("MailServerDown: SMTP 421") and f"#{seeded['dead'][-1]}" in group[4]
        )
        await _shot(page, shots, "dead")

        await page.click("header >> text=Schedules")
        assert "late" in await page.locator("#schedules tr", has_text="hourly-digest").inner_text()

        await page.click("header >> text=Limits")
        limit = await page.locator("#limits tr", has_text="mail").locator("td").all_inner_texts()
        assert limit == ["mail", "3", "-", "3", "0"]

        await page.click("header >> text=Workers")
        worker = await page.locator("#workers tr", has_text=live_worker.worker_id).inner_text()
        assert str(os.getpid()) in worker and "default, reports" in worker
        await _shot(page, shots, "workers")

        # Read-only: no action is offered, and one sent anyway is refused.
        response = await page.request.post(
            url + "/actions/dead",
            form={"action": "retry", "id": str(seeded["dead"][0]), "step": "apply"},
        )
        assert response.status == 403 and "read-only" in await response.text()
        refused = await page.request.post(
            url + "/actions/pause", form={"queue": "default", "op": "pause"}
        )
        assert refused.status == 403 and "read-only" in await refused.text()
    assert (await outbox_row(conn, seeded["dead"][0]))["state"] == "dead"
    assert await pgqueue.admin.list_paused(conn) == []


async def test_live_refresh_updates_the_page_without_a_reload(
    db_dsn: str, conn: asyncpg.Connection, seeded: dict[str, Any], tmp_path: Path
) -> None:
    async with (
        dashboard_server(db_dsn, "--refresh", "2", log=tmp_path / "server.log") as url,
        browser_page() as page,
    ):
        await page.goto(url + "/")
        await page.evaluate("window.marker = 'same document'")
        assert await page.inner_text("#total-pending") == "1"
        await pgqueue.enqueue(conn, "report.built", {"report": 100}, queue="reports")
        await expect(page.locator("#total-pending")).to_have_text("2", timeout=15_000)
        assert await page.evaluate("window.marker") == "same document"  # no full reload


async def test_overview_shows_held_back_ordering_keys_until_released(
    db_dsn: str, conn: asyncpg.Connection, tmp_path: Path
) -> None:
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    ids = [
        await pgqueue.enqueue(conn, "order.paid", {}, ordering_key="customer-7", run_at=later)
        for _ in range(3)
    ]
    # The key's head died for its handler 'mail': the two later events wait behind it.
    await conn.execute(
        "UPDATE pgqueue.outbox SET state = 'dead', last_error = 'mail: SMTP 421',"
        " handlers = $2::jsonb WHERE id = $1",
        ids[0],
        json.dumps({"mail": {"state": "dead", "attempts": 1}}),
    )
    async with dashboard_server(db_dsn, log=tmp_path / "server.log") as url, browser_page() as page:
        await page.goto(url + "/")
        held = page.locator("#held-back tr", has_text="customer-7")
        row = await held.locator("td").all_inner_texts()
        assert row == ["customer-7", str(ids[0]), "order.paid", "dead", "2", "mail: SMTP 421"]
        await page.click(f"#held-back a:text-is('{ids[0]}')")
        await page.wait_for_url(re.compile(rf"/events/{ids[0]}$"))

        assert await pgqueue.admin.discard(conn, ordering_key="customer-7") == [ids[0]]
        await page.goto(url + "/")
        assert await page.locator("#overview").count() == 1
        assert await page.locator("#held-back").count() == 0


async def test_retry_a_dead_event_end_to_end(
    db_dsn: str, conn: asyncpg.Connection, seeded: dict[str, Any], tmp_path: Path
) -> None:
    chosen = seeded["dead"][2]
    log = tmp_path / "server.log"
    async with (
        dashboard_server(db_dsn, "--allow-actions", log=log, env=BASIC_ENV) as url,
        browser_page(http_credentials={"username": USER, "password": PASSWORD}) as page,
    ):
        await page.goto(url + "/events?state=dead")
        await page.check(f"input[name=id][value='{chosen}']")
        await page.click("#retry-selected")
        assert await page.inner_text("#preview") == (f"1 dead event(s) to retry (ids {chosen})")
        assert (await outbox_row(conn, chosen))["state"] == "dead"  # the preview wrote nothing
        await _shot(page, screenshot_dir(tmp_path), "confirm")
        await page.click("#confirm")
        assert await page.inner_text("#result") == "1 dead event(s) sent back to pending"

        row = await outbox_row(conn, chosen)
        assert row["state"] == "pending"
        records = await conn.fetchval("SELECT handlers FROM pgqueue.outbox WHERE id = $1", chosen)
        assert '"mail": {"seen": 1, "state": "pending", "attempts": 0' in records
        assert '"crm": {' in records and '"state": "done"' in records

        # The mail server is back: the worker runs only mail again and the event is done.
        await conn.execute("DROP TABLE mail_down")
        stats = await run_burst(db_dsn, registry, queues=("default", "reports"))
        assert stats.done == 1
        assert (await outbox_row(conn, chosen))["state"] == "done"

        # By filter: the group's Retry on the Dead page, the count first.
        await page.goto(url + "/dead")
        await (
            page.locator("#dead-groups tr", has_text="mail").locator("button[value=retry]").click()
        )
        assert await page.inner_text("#preview") == (
            "5 dead event(s) to retry (type order.paid, handler mail)"
        )
        await page.click("#confirm")
        assert await page.inner_text("#result") == "5 dead event(s) sent back to pending"
    assert await conn.fetchval("SELECT count(*) FROM pgqueue.outbox WHERE state = 'dead'") == 0
    logged = log.read_text()
    assert (
        f"dashboard action by {USER} from 127.0.0.1: retry 1 dead event(s) (ids {chosen})" in logged
    )
    assert f"dashboard action by {USER} from 127.0.0.1: retry 5 dead event(s)" in logged


async def test_cancel_pause_replay_and_limit_override(
    db_dsn: str, conn: asyncpg.Connection, seeded: dict[str, Any], tmp_path: Path
) -> None:
    done_report = seeded["done"][0]
    # The token works as the password of the browser's login prompt.
    async with (
        dashboard_server(
            db_dsn,
            "--allow-actions",
            "--show-payloads",
            log=tmp_path / "server.log",
            env={"PGQUEUE_DASHBOARD_TOKEN": TOKEN},
        ) as url,
        browser_page(http_credentials={"username": "bob", "password": TOKEN}) as page,
    ):
        await page.goto(f"{url}/events/{seeded['pending']}")
        assert "later@example.com" in await page.inner_text("#payload")
        await page.fill("#reschedule-when", "2h")
        await page.click("#reschedule-event")
        assert await page.inner_text("#result") == "1 pending event(s) rescheduled"
        due = await conn.fetchval(
            "SELECT run_at - now() FROM pgqueue.outbox WHERE id = $1", seeded["pending"]
        )
        assert dt.timedelta(minutes=110) < due <= dt.timedelta(hours=2)
        await page.goto(f"{url}/events/{seeded['pending']}")
        await page.click("#cancel-event")
        assert (await page.inner_text("#preview")).startswith(
            "1 event(s) to cancel (1 pending, 0 running)"
        )
        await page.click("#confirm")
        assert await page.inner_text("#result") == "1 event(s) cancelled"
        row = await outbox_row(conn, seeded["pending"])
        assert row["state"] == "cancelled"
        assert row["last_error"] == "cancelled from the dashboard by bob (token)"
        await page.goto(f"{url}/events?state=cancelled")
        assert str(seeded["pending"]) in await page.locator("#events").inner_text()

        # Pause a queue from the overview, see it listed as paused, resume it.
        await page.goto(url + "/")
        await page.click("#pause-reports")
        await expect(page.locator("#notice")).to_have_text("queue reports paused")
        assert "paused" in await page.locator("#queues tr", has_text="reports").inner_text()
        paused = await pgqueue.admin.list_paused(conn)
        assert [(p.queue, p.paused_by) for p in paused] == [("reports", "dashboard:bob (token)")]
        await page.click("#resume-reports")
        await expect(page.locator("#notice")).to_have_text("queue reports resumed")
        assert await pgqueue.admin.list_paused(conn) == []

        await page.goto(f"{url}/events/{done_report}")
        await page.fill("#replay-handler", "archive")
        await page.click("#replay-event")
        assert await page.inner_text("#preview") == (
            "1 done report.built event(s) to replay to handler archive"
        )
        await page.click("#confirm")
        assert (await page.inner_text("#result")).endswith("1 event(s) replayed to handler archive")
        assert (await outbox_row(conn, done_report))["state"] == "pending"

        await page.goto(url + "/limits")
        await page.fill("input[aria-label='override of mail']", "1")
        await page.locator("#limits tr", has_text="mail").locator("text=Set").click()
        await page.wait_for_selector("#notice")
        assert (
            await conn.fetchval(
                "SELECT override FROM pgqueue.handler_limits WHERE handler = 'mail'"
            )
            == 1
        )
        assert (await page.locator("#limits tr", has_text="mail").locator("td").all_inner_texts())[
            :4
        ] == ["mail", "3", "1", "1"]
        await page.locator("#limits tr", has_text="mail").locator("text=Reset").click()
        await page.wait_for_selector("#notice")
        assert (
            await conn.fetchval(
                "SELECT override FROM pgqueue.handler_limits WHERE handler = 'mail'"
            )
            is None
        )


def _request(
    url: str, *, headers: dict[str, str] | None = None, data: bytes | None = None
) -> tuple[int, str, dict[str, str]]:
    request = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read().decode(), _lower(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(), _lower(exc.headers)


def _lower(headers: Any) -> dict[str, str]:
    return {name.lower(): value for name, value in headers.items()}


async def test_authentication_and_csrf_refusals(
    db_dsn: str, conn: asyncpg.Connection, seeded: dict[str, Any], tmp_path: Path
) -> None:
    target = seeded["dead"][0]
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    async with (
        dashboard_server(
            db_dsn,
            "--allow-actions",
            log=tmp_path / "server.log",
            env={"PGQUEUE_DASHBOARD_TOKEN": TOKEN},
        ) as url,
        browser_page(http_credentials={"username": "bob", "password": TOKEN}) as page,
    ):
        # Without credentials: the login challenge, not the page.
        status, _, headers = await asyncio.to_thread(_request, url + "/")
        assert status == 401 and "pgqueue dashboard" in headers["www-authenticate"]

        status, _, _ = await asyncio.to_thread(
            _request, url + "/", headers={"Authorization": "Bearer wrong-token-0123456789"}
        )
        assert status == 401
        status, body, headers = await asyncio.to_thread(_request, url + "/events", headers=bearer)
        assert status == 200 and "frame-ancestors 'none'" in headers["content-security-policy"]
        token = re.search(r'name="csrf" value="([0-9a-f]+)"', body)
        assert token is not None
        form = f"action=retry&id={target}&step=apply".encode()

        async def post(extra: dict[str, str], body: bytes) -> tuple[int, str]:
            status, text, _ = await asyncio.to_thread(
                _request, url + "/actions/dead", headers={**bearer, **extra}, data=body
            )
            return status, text

        assert await post({}, form) == (
            403,
            "refused: the form's CSRF token is missing or wrong: reload the page and try again\n",
        )
        assert (await post({}, form + b"&csrf=" + b"0" * 64))[0] == 403
        with_token = form + b"&csrf=" + token.group(1).encode()
        status, text = await post({"Origin": "http://evil.example"}, with_token)
        assert (status, text) == (403, "refused: the request came from another origin\n")
        status, text = await post({"Sec-Fetch-Site": "cross-site"}, with_token)
        assert status == 403 and "another site" in text
        # A logged-in browser posting a form from a page of another site, even with a
        # stolen token, is refused too. (The other site is served by Playwright's router:
        # no request leaves the machine.)
        attack = (
            f'<form method="post" action="{url}/actions/dead"><input name="action" value="retry">'
            f'<input name="id" value="{target}"><input name="step" value="apply">'
            f'<input name="csrf" value="{token.group(1)}"></form>'
        )
        await page.route(
            "http://evil.example/**",
            lambda route: route.fulfill(status=200, content_type="text/html", body=attack),
        )
        await page.goto(url + "/")  # logged in (the browser answered the challenge)
        await page.goto("http://evil.example/page")
        async with page.expect_navigation() as navigation:
            await page.evaluate("() => document.forms[0].submit()")
        refused = await navigation.value
        assert refused is not None and refused.status == 403
        assert (await outbox_row(conn, target))["state"] == "dead"
        # The same form with the token, from our own origin, works.
        assert (await post({}, with_token))[0] == 200
    assert (await outbox_row(conn, target))["state"] == "pending"


async def test_mounted_under_a_prefix_in_a_starlette_app(
    db_dsn: str, seeded: dict[str, Any], tmp_path: Path
) -> None:
    import uvicorn
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Mount, Route

    from tests.integration.dashboard_support import free_port

    async def home(request: Any) -> PlainTextResponse:
        return PlainTextResponse("the host application")

    dashboard = pgqueue.admin.pgqueue_dashboard(db_dsn)
    app = Starlette(routes=[Route("/", home), Mount("/pgqueue", app=dashboard)])
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False)
    )
    task = asyncio.create_task(server.serve())
    try:
        await wait_for(lambda: _started(server), timeout=15, message="uvicorn never started")
        async with browser_page() as page:
            await page.goto(f"http://127.0.0.1:{port}/pgqueue/")
            await page.click("header >> text=Dead")
            assert page.url == f"http://127.0.0.1:{port}/pgqueue/dead"
            assert "6 in all" in await page.inner_text("h1")
            await page.click("#dead-totals a")
            assert "/pgqueue/events?state=dead" in page.url
            assert await page.locator("#events tr").count() == 1 + 6
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 15)
        await dashboard.dashboard.aclose()


async def _started(server: Any) -> bool:
    return bool(server.started)
