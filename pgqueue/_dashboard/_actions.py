"""The actions: retry and discard dead events, replay done ones, cancel pending ones, set or
reset a limit override. Each is two steps, a preview that counts what would change (nothing
is written) and the confirmed apply, and calls the library function the CLI calls. Every
apply is logged with who did it (``pgqueue.dashboard`` logger)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from .. import _steer as steer
from .._cancel import cancel_pending, count_cancellable
from .._cancel import reschedule as reschedule_events
from .._errors import ConfigurationError
from .._parse import parse_ids, parse_time_bound
from .._pauses import pause_queue, resume_queue
from .._worker.limits import override_limit
from ._context import Dashboard, log

Form = dict[str, list[str]]
MAX_SELECTED = 1000


def _one(form: Form, name: str) -> str:
    values = form.get(name) or [""]
    return values[0].strip()


def _ids(form: Form) -> list[int]:
    try:
        ids = [int(v) for v in form.get("id", []) if v.strip()]
    except ValueError:
        raise ConfigurationError("event ids must be whole numbers") from None
    if len(ids) > MAX_SELECTED:
        raise ConfigurationError(
            f"at most {MAX_SELECTED} events by selection; use a filter for more"
        )
    return ids


def _bound(form: Form, name: str) -> Any:
    text = _one(form, name)
    return parse_time_bound(text) if text else None


def _log(request: Request, what: str, **extra: Any) -> None:
    user: str = request.state.user
    client = request.client.host if request.client else "?"
    log.info(
        "dashboard action by %s from %s: %s",
        user,
        client,
        what,
        extra={"user": user, "client": client, **extra},
    )


def _hidden(form: Form, names: tuple[str, ...]) -> list[tuple[str, str]]:
    """The form's fields to carry from the preview to the apply step."""
    return [(n, v) for n in names for v in form.get(n, []) if v.strip()]


async def dead(dash: Dashboard, request: Request, form: Form) -> Response:
    """Retry or discard dead events, by selection (ids) or by filter (type, handler, since,
    until; or every dead event with ``all``)."""
    action = _one(form, "action")
    if action not in ("retry", "discard"):
        raise ConfigurationError("action must be retry or discard")
    ids = _ids(form)
    filters: dict[str, Any] = {
        "ids": ids or None,
        "event_type": _one(form, "type") or None,
        "handler": _one(form, "handler") or None,
        "since": _bound(form, "since"),
        "until": _bound(form, "until"),
        "schema": dash.settings.schema,
    }
    chosen = ids or any(filters[k] for k in ("event_type", "handler", "since", "until"))
    if not chosen and _one(form, "all") != "1":
        raise ConfigurationError(
            f"nothing selected: tick dead events, or give a type, handler or time to {action}"
        )
    described = _describe(ids, form)
    pool = await dash.pool()
    async with pool.acquire() as conn:
        if _one(form, "step") != "apply":
            total = await steer.count_dead(conn, **filters)
            return dash.render(
                request,
                "confirm.html",
                page="events",
                title=f"{action.title()} dead events",
                message=f"{total} dead event(s) to {action} ({described})",
                count=total,
                target="/actions/dead",
                fields=_hidden(form, ("action", "id", "type", "handler", "since", "until", "all")),
                button=f"{action.title()} {total} event(s)",
            )
        function = steer.retry if action == "retry" else steer.discard
        changed = await function(conn, **filters)
    verb = "sent back to pending" if action == "retry" else "discarded"
    _log(
        request,
        f"{action} {len(changed)} dead event(s) ({described})",
        action=action,
        count=len(changed),
        event_ids=changed[:20],
    )
    return dash.render(
        request,
        "done.html",
        page="events",
        message=f"{len(changed)} dead event(s) {verb}",
        changed=changed[:50],
        more=len(changed) > 50,
    )


def _describe(ids: list[int], form: Form) -> str:
    parts = []
    if ids:
        shown = ", ".join(str(i) for i in ids[:10])
        parts.append(f"ids {shown}{' ...' if len(ids) > 10 else ''}")
    for name in ("type", "handler", "since", "until"):
        if _one(form, name):
            parts.append(f"{name} {_one(form, name)}")
    return ", ".join(parts) or "every dead event"


async def replay(dash: Dashboard, request: Request, form: Form) -> Response:
    """Replay done events of one type to every handler or to one, after a preview."""
    event_type = _one(form, "type")
    handler = _one(form, "handler") or None
    id_text = _one(form, "ids")
    filters: dict[str, Any] = {
        "handler": handler,
        "ids": parse_ids((id_text,)) if id_text else None,
        "since": _bound(form, "since"),
        "until": _bound(form, "until"),
        "schema": dash.settings.schema,
    }
    target = f"handler {handler}" if handler else "every handler"
    pool = await dash.pool()
    async with pool.acquire() as conn:
        if _one(form, "step") != "apply":
            plan = await steer.preview_replay(conn, event_type, **filters)
            skipped = ", ".join(f"{n} {state}" for state, n in sorted(plan.skipped.items()))
            head = (
                f"resuming replay #{plan.id} ({plan.replayed_before} already replayed): "
                if plan.id is not None
                else ""
            )
            return dash.render(
                request,
                "confirm.html",
                page="replay",
                title="Replay done events",
                message=f"{head}{plan.to_replay} done {event_type} event(s) to replay to "
                f"{target}" + (f" (skipped, not done: {skipped})" if skipped else ""),
                count=plan.to_replay,
                target="/actions/replay",
                fields=_hidden(form, ("type", "handler", "ids", "since", "until")),
                button=f"Replay {plan.to_replay} event(s)",
            )
        result = await steer.replay(conn, event_type, **filters)
    _log(
        request,
        f"replay #{result.id}: {result.replayed} {event_type} event(s) to {target}",
        action="replay",
        count=result.replayed,
    )
    return dash.render(
        request,
        "done.html",
        page="replay",
        message=f"replay #{result.id}: {result.replayed} event(s) replayed to {target}",
        changed=[],
        more=False,
    )


async def cancel(dash: Dashboard, request: Request, form: Form) -> Response:
    """Cancel pending and running events (final state 'cancelled', pgqueue/_cancel.py)."""
    ids = _ids(form)
    if not ids:
        raise ConfigurationError("name the events to cancel")
    user: str = request.state.user
    pool = await dash.pool()
    async with pool.acquire() as conn:
        if _one(form, "step") != "apply":
            found = await count_cancellable(conn, ids=ids, schema=dash.settings.schema)
            return dash.render(
                request,
                "confirm.html",
                page="events",
                title="Cancel events",
                message=f"{found.total} event(s) to cancel ({found.pending} pending, "
                f"{found.running} running): they become 'cancelled', kept for audit and never "
                "run; running handlers are cancelled at their worker's next heartbeat",
                count=found.total,
                target="/actions/cancel",
                fields=_hidden(form, ("id",)),
                button=f"Cancel {found.total} event(s)",
            )
        changed = await cancel_pending(
            conn,
            ids,
            reason=f"cancelled from the dashboard by {user}",
            schema=dash.settings.schema,
        )
    what = f"cancel {len(changed)} event(s) ({_describe(ids, {})})"
    return _applied(dash, request, "cancel", what, changed, f"{len(changed)} event(s) cancelled")


def _applied(
    dash: Dashboard, request: Request, action: str, what: str, changed: list[int], message: str
) -> Response:
    """Log an applied action on events and show its result page."""
    _log(request, what, action=action, count=len(changed), event_ids=changed[:20])
    return dash.render(
        request, "done.html", page="events", message=message, changed=changed, more=False
    )


async def reschedule(dash: Dashboard, request: Request, form: Form) -> Response:
    """Move pending events to a new due time: ``when`` is a delay from now (10m) or a time."""
    ids = _ids(form)
    if not ids:
        raise ConfigurationError("name the pending events to reschedule")
    text = _one(form, "when") or "0s"
    # parse_time_bound reads a duration as "that long ago"; here it is "that long from now".
    when = parse_time_bound(text)
    pool = await dash.pool()
    async with pool.acquire() as conn:
        moved = await reschedule_events(conn, ids, when, schema=dash.settings.schema)
    what = f"reschedule {len(moved)} pending event(s) to {text} ({_describe(ids, {})})"
    return _applied(
        dash, request, "reschedule", what, moved, f"{len(moved)} pending event(s) rescheduled"
    )


async def pause(dash: Dashboard, request: Request, form: Form) -> Response:
    """Pause (op=pause) or resume (op=resume) one queue, as ``pgqueue pause`` / ``resume``."""
    queue = _one(form, "queue")
    op = _one(form, "op")
    if op not in ("pause", "resume"):
        raise ConfigurationError("say whether to pause or resume the queue")
    user: str = request.state.user
    pool = await dash.pool()
    async with pool.acquire() as conn:
        if op == "pause":
            changed = await pause_queue(
                conn, queue, who=f"dashboard:{user}"[:200], schema=dash.settings.schema
            )
        else:
            changed = await resume_queue(conn, queue, schema=dash.settings.schema)
    done = "paused" if op == "pause" else "resumed"
    what = f"queue {queue} {done}" if changed else f"queue {queue} was already {done}"
    _log(request, what, action=op, queue=queue, changed=changed)
    base = request.scope.get("root_path", "").rstrip("/")
    return RedirectResponse(f"{base}/?{urlencode({'notice': what})}", status_code=303)


async def limit(dash: Dashboard, request: Request, form: Form) -> Response:
    """Set (a number) or reset (empty) one handler's limit override."""
    handler = _one(form, "handler")
    text = _one(form, "override")
    if not handler:
        raise ConfigurationError("name the handler whose limit to change")
    if text and not text.isdigit():
        raise ConfigurationError(f"{text!r} is not a limit: give a whole number >= 1, or none")
    value = int(text) if text else None
    pool = await dash.pool()
    async with pool.acquire() as conn, conn.transaction():
        await override_limit(conn, handler, value, dash.settings.schema)
    what = (
        f"limit override of {handler} set to {value}"
        if value
        else f"limit override of {handler} reset"
    )
    _log(request, what, action="limit", handler=handler, override=value)
    base = request.scope.get("root_path", "").rstrip("/")
    return RedirectResponse(f"{base}/limits?{urlencode({'notice': what})}", status_code=303)
