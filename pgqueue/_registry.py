"""Event type -> named handlers, each with its payload model, retry policy and timeout."""

from __future__ import annotations

import asyncio
import importlib
import inspect
import traceback
import typing
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import tenacity
from pydantic import BaseModel

from ._backoff import RetryPolicy
from ._errors import RegistryError
from ._models import Context
from ._names import EVENT_TYPE_RULE, event_type_ok, handler_name_problem, rate_problem
from ._schedule import Schedule

if typing.TYPE_CHECKING:
    from ._relay.base import Relay

# An async function, or a plain one (run in the worker's thread pool: see _worker/threads.py).
HandlerFn = Callable[..., Awaitable[None]] | Callable[..., None]
DEFAULT_TIMEOUT = 60.0


# A relay's default policy: waits from 0.2 s up to 30 s, so that a retried message still falls
# inside a broker's dedupe window (NATS's default is 2 minutes); 20 attempts span ~7 minutes
# of refusals. An unreachable broker spends no attempts at all (the breaker defers instead).
def relay_policy() -> RetryPolicy:
    """0.2 s doubling to 30 s (with jitter), 20 attempts (~7 minutes of refusals)."""
    return RetryPolicy(
        stop=tenacity.stop_after_attempt(20),
        wait=tenacity.wait_exponential_jitter(multiplier=0.2, max=30, jitter=0.2),
    )


async def _batch_path_only(payload: Any, ctx: Context) -> None:
    # The worker hands relay units to its batch path (pgqueue/_relay/batches.py), never to a
    # runner; reaching this means a path forgot that.
    raise RuntimeError(
        f"relay handler {ctx.handler!r} publishes only from a pgqueue Worker (its batch path); "
        f"InProcess does not publish to brokers"
    )


@dataclass(frozen=True)
class Handler:
    """One registered handler.

    ``name`` is its stable identity in the database: renaming the Python function does not
    orphan queued events as long as the name stays.
    """

    event_type: str
    name: str
    fn: HandlerFn
    model: type[BaseModel] | None
    policy: RetryPolicy
    timeout: float | None
    takes_context: bool
    # At most this many runs at once across every worker (None: unlimited); see _worker/limits.py.
    concurrency: int | None = None
    # Runs one ordering key's events one at a time, in id order (see _worker/ordering.py).
    ordered: bool = False
    # At most this often across every worker ('100/s', '/m', '/h'; see _worker/rates.py), per
    # ordering key when rate_per_key.
    rate: str | None = None
    rate_per_key: bool = False
    # False: a plain ``def``; the worker runs it in its thread pool (``sync_threads``).
    is_async: bool = True
    # A relay handler publishes to this broker on the worker's batch path (pgqueue/_relay).
    relay: Relay | None = None

    def parse(self, payload: dict[str, Any]) -> Any:
        """The value passed to the handler: the validated model, or the dict itself."""
        if self.model is None:
            return payload
        return self.model.model_validate(payload)

    async def __call__(self, payload: Any, ctx: Context) -> None:
        """Run the handler function once (a sync one in a thread of asyncio's default pool;
        the worker uses its own bounded pool and :meth:`call_sync` instead)."""
        if not self.is_async:
            await asyncio.to_thread(self.call_sync, payload, ctx)
        elif self.takes_context:
            await self.fn(payload, ctx)  # type: ignore[misc]
        else:
            await self.fn(payload)  # type: ignore[misc]

    def call_sync(self, payload: Any, ctx: Context) -> None:
        """Run a plain-``def`` handler once, in the calling thread."""
        result = self.fn(payload, ctx) if self.takes_context else self.fn(payload)
        if inspect.isawaitable(result):  # e.g. a lambda or partial around an async function
            close = getattr(result, "close", None)
            if close is not None:
                close()  # no "never awaited" warning on top of this error
            raise TypeError(
                f"handler {self.name!r} returned an awaitable from a plain function: "
                "register the async function itself (async def), or make it synchronous"
            )


def _payload_model(fn: HandlerFn) -> type[BaseModel] | None:
    params = list(inspect.signature(fn).parameters.values())
    if not params:
        return None
    try:
        hints = typing.get_type_hints(fn)
    except Exception as exc:  # unresolvable forward reference
        raise RegistryError(
            f"cannot read the type hints of handler {fn.__name__!r}: {exc}"
        ) from exc
    annotation = hints.get(params[0].name)
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


@dataclass
class Registry:
    """Which handlers run for which event type.

    Handlers must be idempotent: delivery is at least once, and a handler may run again after a
    crash. :func:`pgqueue.once` makes a database effect happen once per (event, handler).

    Example::

        registry = Registry()

        @registry.on("order.placed")
        async def send_email(order: OrderPlaced, ctx: Context) -> None: ...
    """

    _handlers: dict[str, dict[str, Handler]] = field(default_factory=dict)
    _schedules: dict[str, Schedule] = field(default_factory=dict)

    def on(
        self,
        event_type: str,
        *,
        name: str | None = None,
        retry: RetryPolicy | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        concurrency: int | None = None,
        ordered: bool = False,
        rate: str | None = None,
        rate_per_key: bool = False,
    ) -> Callable[[HandlerFn], HandlerFn]:
        """Register the decorated function as a handler of ``event_type``.

        An ``async def`` runs on the worker's event loop; a plain ``def`` (Django ORM code,
        a requests-based client) runs in the worker's bounded thread pool
        (``WorkerSettings.sync_threads``) with the same retries, timeout, dead state and
        metrics. A timeout cannot stop a thread: see docs/frameworks.md.

        ``name`` defaults to the function's name; the payload model is taken from the first
        parameter's annotation when it is a pydantic model (a payload that fails validation
        sends the event dead for this handler at once). ``timeout`` is in seconds per attempt.
        ``concurrency`` caps how many runs of this handler (by name, across event types) may
        run at once across every worker; a run that finds the limit full is deferred without
        using an attempt (an operator may override the value: see ``handler_limits``).
        ``ordered=True`` runs the events of one ordering key one at a time, in id order, across
        every worker; a run whose key has an earlier event still waiting for this handler
        (running, pending a retry, or dead) is deferred without using an attempt. Events
        without a key run as usual. See docs/ordering.md.
        ``rate`` ("100/s", "30/m", "500/h") caps how often this handler runs across every
        worker, per ordering key with ``rate_per_key=True``; a run over the rate is deferred
        without using an attempt (``pgqueue limits --rate`` overrides it).
        """

        def decorator(fn: HandlerFn) -> HandlerFn:
            self.add(
                event_type,
                fn,
                name=name,
                retry=retry,
                timeout=timeout,
                concurrency=concurrency,
                ordered=ordered,
                rate=rate,
                rate_per_key=rate_per_key,
            )
            return fn

        return decorator

    def add(
        self,
        event_type: str,
        fn: HandlerFn,
        *,
        name: str | None = None,
        retry: RetryPolicy | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        concurrency: int | None = None,
        ordered: bool = False,
        rate: str | None = None,
        rate_per_key: bool = False,
    ) -> Handler:
        """Register ``fn`` without a decorator; returns the registered handler."""
        if not callable(fn) or inspect.isasyncgenfunction(fn) or inspect.isgeneratorfunction(fn):
            raise RegistryError(
                f"handler {getattr(fn, '__name__', fn)!r} must be a function (async def or "
                "def), not a generator or another object"
            )
        handler_name = name or getattr(fn, "__name__", "")
        if not event_type_ok(event_type):
            # The outbox would refuse every event of this type: the handler could never run.
            raise RegistryError(
                f"handler {handler_name!r}: event type {event_type!r} must be {EVENT_TYPE_RULE}"
            )
        problem = handler_name_problem(handler_name)
        if problem is not None or not isinstance(handler_name, str):
            raise RegistryError(f"handler name {handler_name!r} {problem}")
        if timeout is not None and timeout <= 0:
            raise RegistryError(f"handler {handler_name!r}: timeout must be positive")
        for_type = self._handlers.setdefault(event_type, {})
        if handler_name in for_type:
            raise RegistryError(
                f"handler name {handler_name!r} is registered twice for event type "
                f"{event_type!r}; pass name=... to one of them"
            )
        self._check_concurrency(handler_name, concurrency)
        self._check_ordered(handler_name, ordered)
        self._check_rate(handler_name, rate, rate_per_key)
        n_params = len(inspect.signature(fn).parameters)
        if n_params not in (1, 2):
            raise RegistryError(
                f"handler {handler_name!r} must take (payload) or (payload, ctx), "
                f"not {n_params} parameters"
            )
        handler = Handler(
            event_type=event_type,
            name=handler_name,
            fn=fn,
            model=_payload_model(fn),
            policy=retry or RetryPolicy(),
            timeout=timeout,
            takes_context=n_params == 2,
            concurrency=concurrency,
            ordered=ordered,
            rate=rate,
            rate_per_key=rate_per_key,
            is_async=inspect.iscoroutinefunction(fn),
        )
        for_type[handler_name] = handler
        return handler

    def relay(
        self,
        *event_types: str,
        to: Relay,
        name: str | None = None,
        retry: RetryPolicy | None = None,
        ordered: bool = False,
    ) -> tuple[Handler, ...]:
        """Forward every event of ``event_types`` to a broker: ``to`` is a
        :class:`pgqueue.relay.NatsRelay`, :class:`pgqueue.relay.RabbitMQRelay` or
        :class:`pgqueue.relay.RedisRelay`.

        The relay is a handler named ``name`` (default ``relay-<broker>``) on each type: it
        has its own state, retries, dead state, ``retry --handler`` and ``replay --handler``,
        beside any local handler. An event is done for it only once the broker confirmed the
        message; a refused message (unroutable, nacked) is a failed attempt under ``retry``;
        an unreachable broker spends no attempts. See docs/relay.md.
        ``ordered=True`` publishes the events of one ordering key one at a time, in id order
        (the key is also the message's ``pgqueue-ordering-key`` header / field).
        """
        if not event_types:
            raise RegistryError("registry.relay(...) needs at least one event type")
        handler_name = name or f"relay-{to.kind}"
        added = []
        for event_type in event_types:
            for_type = self._handlers.setdefault(event_type, {})
            if handler_name in for_type:
                raise RegistryError(
                    f"handler name {handler_name!r} is registered twice for event type "
                    f"{event_type!r}; pass name=... to one of them"
                )
            self._check_concurrency(handler_name, None)
            self._check_ordered(handler_name, ordered)
            handler = Handler(
                event_type=event_type,
                name=handler_name,
                fn=_batch_path_only,
                model=None,
                policy=retry or relay_policy(),
                timeout=None,
                takes_context=True,
                relay=to,
                ordered=ordered,
            )
            for_type[handler_name] = handler
            added.append(handler)
        return tuple(added)

    def schedule(
        self,
        expression: str,
        event_type: str,
        *,
        payload: Mapping[str, Any] | None = None,
        name: str | None = None,
        timezone: str = "UTC",
        queue: str = "default",
        priority: int = 0,
    ) -> Schedule:
        """Emit an ``event_type`` event at every tick of the cron ``expression``.

        A worker serving this registry emits the ticks, each exactly once however many
        workers run; after downtime only the latest missed tick is emitted. The event's payload
        is ``payload`` plus ``"tick"`` (the tick, ISO 8601 UTC). ``name`` (default: the event
        type) identifies the schedule in the database; ``expression`` has 5 fields, or 6 with
        seconds first, read in ``timezone``. A bad expression raises RegistryError here.
        """
        entry = Schedule(
            name=name or event_type,
            expression=expression,
            event_type=event_type,
            payload=dict(payload or {}),
            timezone=timezone,
            queue=queue,
            priority=priority,
        )
        if entry.name in self._schedules:
            raise RegistryError(
                f"schedule name {entry.name!r} is registered twice; pass name=... to one of them"
            )
        self._schedules[entry.name] = entry
        return entry

    def periodic(
        self,
        expression: str,
        *,
        name: str | None = None,
        timezone: str = "UTC",
        queue: str = "default",
        priority: int = 0,
        retry: RetryPolicy | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
    ) -> Callable[[HandlerFn], HandlerFn]:
        """Run the decorated handler at every tick of ``expression``.

        The handler gets its own event type, ``periodic.<name>`` (``name`` defaults to the
        function's name, and also names the schedule), with the payload ``{"tick": ...}``.
        """

        def decorator(fn: HandlerFn) -> HandlerFn:
            handler_name = name or getattr(fn, "__name__", "")
            event_type = f"periodic.{handler_name}"
            self.schedule(
                expression,
                event_type,
                name=handler_name,
                timezone=timezone,
                queue=queue,
                priority=priority,
            )
            self.add(event_type, fn, name=handler_name, retry=retry, timeout=timeout)
            return fn

        return decorator

    @property
    def schedules(self) -> tuple[Schedule, ...]:
        """The schedules registered with :meth:`schedule` and :meth:`periodic`."""
        return tuple(self._schedules.values())

    def _check_concurrency(self, name: str, concurrency: int | None) -> None:
        """A limit must be a positive int, and one name has one limit (it is shared)."""
        if concurrency is not None and (
            isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1
        ):
            raise RegistryError(
                f"handler {name!r}: concurrency must be a positive integer or None, "
                f"not {concurrency!r}"
            )
        for other in self:
            if other.name == name and other.concurrency != concurrency:
                raise RegistryError(
                    f"handler name {name!r} has concurrency={other.concurrency!r} for event "
                    f"type {other.event_type!r} and {concurrency!r} here; a limit is shared by "
                    f"every handler of that name, so give them the same value"
                )

    def _check_ordered(self, name: str, ordered: bool) -> None:
        """``ordered`` is a bool, and one name is ordered for every event type or none (the
        order of a key spans the event types of that name)."""
        if not isinstance(ordered, bool):
            raise RegistryError(f"handler {name!r}: ordered must be True or False")
        for other in self:
            if other.name == name and other.ordered != ordered:
                raise RegistryError(
                    f"handler name {name!r} has ordered={other.ordered!r} for event type "
                    f"{other.event_type!r} and {ordered!r} here; give them the same value"
                )

    def _check_rate(self, name: str, rate: str | None, per_key: bool) -> None:
        """A rate is 'N/s|m|h', and one name has one rate (it is shared)."""
        if rate is not None and (problem := rate_problem(rate)) is not None:
            raise RegistryError(f"handler {name!r}: rate {problem}")
        if not isinstance(per_key, bool) or (per_key and rate is None):
            raise RegistryError(f"handler {name!r}: rate_per_key=True needs a rate")
        for other in self:
            if other.name == name and (other.rate, other.rate_per_key) != (rate, per_key):
                raise RegistryError(
                    f"handler name {name!r} has rate={other.rate!r} for event type "
                    f"{other.event_type!r} and {rate!r} here; a rate is shared by every "
                    f"handler of that name, so give them the same value"
                )

    @property
    def rates(self) -> dict[str, tuple[str, bool]]:
        """Handler name -> (rate, per key), for the handlers registered with a rate."""
        return {h.name: (h.rate, h.rate_per_key) for h in self if h.rate is not None}

    @property
    def ordered(self) -> dict[str, tuple[str, ...]]:
        """Handler name -> the event types it handles, for the handlers registered with
        ``ordered=True`` (a key's order spans all of them)."""
        out: dict[str, list[str]] = {}
        for h in self:
            if h.ordered:
                out.setdefault(h.name, []).append(h.event_type)
        return {name: tuple(sorted(types)) for name, types in out.items()}

    @property
    def limits(self) -> dict[str, int]:
        """Handler name -> concurrency, for the handlers registered with a limit."""
        return {h.name: h.concurrency for h in self if h.concurrency is not None}

    @property
    def event_types(self) -> tuple[str, ...]:
        """The event types that have at least one handler, sorted."""
        return tuple(sorted(t for t, hs in self._handlers.items() if hs))

    def handlers_for(self, event_type: str) -> tuple[Handler, ...]:
        """The handlers of ``event_type`` in registration order (empty when none)."""
        return tuple(self._handlers.get(event_type, {}).values())

    def __iter__(self) -> typing.Iterator[Handler]:
        """Every registered handler, type by type."""
        for for_type in self._handlers.values():
            yield from for_type.values()


def load_registry(path: str) -> Registry:
    """Import ``"package.module:attribute"`` and return the Registry it names.

    A module that is not there is a bad path; a module that fails on its own code (an import
    of its own, a NameError, a SyntaxError) is reported with the real error and where it
    happened, file and line, so nobody hunts for a typo in ``--handlers``.
    """
    module_name, sep, attr = path.partition(":")
    hint = "pass --handlers MODULE:ATTRIBUTE of your Registry, e.g. --handlers myapp.jobs:registry"
    if not sep or not module_name or not attr:
        raise RegistryError(f"invalid handlers path {path!r}: {hint}")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if _names_the_path(exc, module_name):
            raise RegistryError(
                f"cannot import handlers module {module_name!r} ({exc}); {hint}"
            ) from exc
        raise RegistryError(_failed_import(module_name, exc)) from exc
    except Exception as exc:
        raise RegistryError(_failed_import(module_name, exc)) from exc
    if not hasattr(module, attr):
        raise RegistryError(f"module {module_name!r} has no attribute {attr!r}; {hint}")
    registry = getattr(module, attr)
    if not isinstance(registry, Registry):
        raise RegistryError(
            f"{path!r} is a {type(registry).__name__}, not a pgqueue.Registry; {hint}"
        )
    return registry


def _names_the_path(exc: ModuleNotFoundError, module_name: str) -> bool:
    """True when the missing module is ``module_name`` or one of its parent packages."""
    parts = module_name.split(".")
    return exc.name in {".".join(parts[: i + 1]) for i in range(len(parts))}


def _failed_import(module_name: str, exc: BaseException) -> str:
    """One line: the module, the real error, and the file and line where it was raised."""
    where = ""
    if isinstance(exc, SyntaxError) and exc.filename:
        where = f" ({exc.filename}, line {exc.lineno})"
    else:
        frames = [
            f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith("<")
        ]
        if frames:  # the innermost frame of real code: importlib's own frames are <frozen ...>
            where = f" ({frames[-1].filename}, line {frames[-1].lineno})"
    return (
        f"handlers module {module_name!r} failed while importing: "
        f"{type(exc).__name__}: {exc}{where}"
    )
