"""Registry rules: names, payload models, signatures, and loading by MODULE:ATTRIBUTE."""

from __future__ import annotations

import datetime as dt
import sys
import textwrap
import uuid
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError
from tenacity import stop_after_attempt

from pgqueue import Context, Registry, RetryPolicy, load_registry
from pgqueue.errors import RegistryError


class Order(BaseModel):
    order_id: int


def _ctx(handler: str = "h") -> Context:
    return Context(1, "order.placed", handler, 1, dt.datetime.now(dt.UTC))


def test_name_defaults_to_the_function_name() -> None:
    registry = Registry()

    @registry.on("order.placed")
    async def send_email(payload: dict[str, Any]) -> None: ...

    assert [h.name for h in registry.handlers_for("order.placed")] == ["send_email"]


def test_name_override_is_the_identity() -> None:
    registry = Registry()

    @registry.on("order.placed", name="email.v1")
    async def send_email(payload: dict[str, Any]) -> None: ...

    (handler,) = registry.handlers_for("order.placed")
    assert handler.name == "email.v1"


def test_same_name_twice_for_one_event_type_is_an_error() -> None:
    registry = Registry()

    @registry.on("order.placed")
    async def notify(payload: dict[str, Any]) -> None: ...

    async def other(payload: dict[str, Any]) -> None: ...

    with pytest.raises(RegistryError, match=r"'notify' is registered twice.*name="):
        registry.add("order.placed", other, name="notify")
    assert len(registry.handlers_for("order.placed")) == 1


def test_same_name_for_different_event_types_is_allowed() -> None:
    registry = Registry()

    async def notify(payload: dict[str, Any]) -> None: ...

    registry.add("order.placed", notify)
    registry.add("order.cancelled", notify)
    assert registry.event_types == ("order.cancelled", "order.placed")
    assert sorted(h.event_type for h in registry) == ["order.cancelled", "order.placed"]


def test_handlers_keep_registration_order() -> None:
    registry = Registry()
    for name in ("c", "a", "b"):

        async def fn(payload: dict[str, Any]) -> None: ...

        registry.add("t", fn, name=name)
    assert [h.name for h in registry.handlers_for("t")] == ["c", "a", "b"]
    assert registry.handlers_for("unknown") == ()


def test_payload_model_comes_from_the_first_parameter_annotation() -> None:
    registry = Registry()

    @registry.on("order.placed")
    async def typed(order: Order, ctx: Context) -> None: ...

    @registry.on("order.placed")
    async def untyped(payload: dict[str, Any], ctx: Context) -> None: ...

    @registry.on("order.placed")
    async def bare(payload, ctx):  # type: ignore[no-untyped-def]
        ...

    models = {h.name: h.model for h in registry.handlers_for("order.placed")}
    assert models == {"typed": Order, "untyped": None, "bare": None}


def test_model_handler_parses_and_rejects_payloads() -> None:
    registry = Registry()

    async def typed(order: Order) -> None: ...

    handler = registry.add("order.placed", typed)
    assert handler.parse({"order_id": 42}) == Order(order_id=42)
    with pytest.raises(ValidationError):
        handler.parse({"order_id": "not a number"})


def test_dict_handler_gets_the_payload_unchanged() -> None:
    async def plain(payload: dict[str, Any]) -> None: ...

    handler = Registry().add("t", plain)
    payload = {"anything": [1, 2]}
    assert handler.parse(payload) is payload


def test_unresolvable_annotation_is_a_registry_error() -> None:
    async def broken(payload: NoSuchType) -> None: ...  # type: ignore[name-defined]  # noqa: F821

    with pytest.raises(RegistryError, match="cannot read the type hints of handler 'broken'"):
        Registry().add("t", broken)


def test_plain_functions_register_as_sync_handlers() -> None:
    registry = Registry()

    @registry.on("t")
    def handle(payload: dict[str, Any]) -> None: ...

    registry.add("t", lambda payload, ctx: None, name="lam")
    by_name = {h.name: h for h in registry.handlers_for("t")}
    assert not by_name["handle"].is_async and not by_name["handle"].takes_context
    assert not by_name["lam"].is_async and by_name["lam"].takes_context


async def test_a_plain_function_returning_an_awaitable_fails_clearly() -> None:
    async def real(payload: dict[str, Any]) -> None: ...

    handler = Registry().add("t", lambda payload: real(payload), name="wrapped")
    with pytest.raises(TypeError, match="'wrapped' returned an awaitable from a plain function"):
        await handler({}, None)  # type: ignore[arg-type]


@pytest.mark.parametrize("fn", [42, "handler"], ids=["int", "str"])
def test_non_callables_are_rejected(fn: Any) -> None:
    with pytest.raises(RegistryError, match="must be a function"):
        Registry().add("t", fn, name="x")


def test_generators_are_rejected() -> None:
    async def agen(payload: dict[str, Any]):  # type: ignore[no-untyped-def]
        yield None

    def gen(payload: dict[str, Any]):  # type: ignore[no-untyped-def]
        yield None

    for fn in (agen, gen):
        with pytest.raises(RegistryError, match=r"must be a function .*not a generator"):
            Registry().add("t", fn)


@pytest.mark.parametrize("n_params", [0, 3])
def test_handler_takes_one_or_two_parameters(n_params: int) -> None:
    namespace: dict[str, Any] = {}
    params = ", ".join(f"p{i}" for i in range(n_params))
    exec(f"async def h({params}):\n    pass", namespace)
    with pytest.raises(RegistryError, match=f"not {n_params} parameters"):
        Registry().add("t", namespace["h"])


def test_handler_name_of_129_characters_is_rejected() -> None:
    async def h(payload: dict[str, Any]) -> None: ...

    with pytest.raises(RegistryError, match="1-128 characters"):
        Registry().add("t", h, name="x" * 129)
    Registry().add("t", h, name="x" * 128)


@pytest.mark.parametrize("timeout", [0, -1.0])
def test_timeout_must_be_positive(timeout: float) -> None:
    async def h(payload: dict[str, Any]) -> None: ...

    with pytest.raises(RegistryError, match="timeout must be positive"):
        Registry().add("t", h, timeout=timeout)


def test_policy_and_timeout_are_kept_and_default() -> None:
    policy = RetryPolicy(stop=stop_after_attempt(2), inline_max_wait=0)

    async def a(payload: dict[str, Any]) -> None: ...

    async def b(payload: dict[str, Any]) -> None: ...

    registry = Registry()
    ha = registry.add("t", a, retry=policy, timeout=None)
    hb = registry.add("t", b)
    assert ha.policy is policy and ha.timeout is None
    assert isinstance(hb.policy, RetryPolicy)
    assert hb.timeout == 60.0


async def test_one_parameter_handler_is_called_without_context() -> None:
    calls: list[tuple[Any, ...]] = []

    async def one(payload: dict[str, Any]) -> None:
        calls.append((payload,))

    async def two(payload: dict[str, Any], ctx: Context) -> None:
        calls.append((payload, ctx.key))

    registry = Registry()
    h1, h2 = registry.add("t", one), registry.add("t", two)
    await h1({"a": 1}, _ctx("one"))
    await h2({"a": 2}, _ctx("two"))
    assert calls == [({"a": 1},), ({"a": 2}, "1:two")]


def test_context_key_is_event_and_handler() -> None:
    assert _ctx("send_email").key == "1:send_email"


# -- load_registry ------------------------------------------------------------------------


@pytest.fixture
def module_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory on sys.path for throwaway handler modules (unique names per test)."""
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def _module(folder: Path, body: str) -> str:
    name = f"pgq_unit_mod_{uuid.uuid4().hex[:8]}"
    (folder / f"{name}.py").write_text(textwrap.dedent(body))
    return name


def test_load_registry_returns_the_named_registry(module_dir: Path) -> None:
    name = _module(
        module_dir,
        """
        import pgqueue
        registry = pgqueue.Registry()

        @registry.on("t")
        async def h(payload):
            pass
        """,
    )
    registry = load_registry(f"{name}:registry")
    assert isinstance(registry, Registry)
    assert registry.event_types == ("t",)
    sys.modules.pop(name, None)


@pytest.mark.parametrize("path", ["handlers", "handlers:", ":registry", ""])
def test_load_registry_rejects_a_path_without_module_and_attribute(path: str) -> None:
    with pytest.raises(RegistryError, match=r"invalid handlers path .*MODULE:ATTRIBUTE"):
        load_registry(path)


def test_load_registry_missing_module_says_what_to_pass() -> None:
    with pytest.raises(
        RegistryError, match=r"cannot import handlers module 'no_such_pgq_module'.*--handlers"
    ):
        load_registry("no_such_pgq_module:registry")


def test_load_registry_module_that_raises_on_import(module_dir: Path) -> None:
    name = _module(module_dir, "raise RuntimeError('config missing')\n")
    with pytest.raises(
        RegistryError, match=rf"'{name}' failed while importing: RuntimeError: config missing"
    ):
        load_registry(f"{name}:registry")


def test_a_handlers_module_failing_on_its_own_import_shows_the_real_error_and_line(
    module_dir: Path,
) -> None:
    """Its missing dependency is not a bad --handlers value: say which import, where."""
    name = _module(module_dir, "import pgqueue\nimport pgq_no_such_dependency\n")
    with pytest.raises(RegistryError) as raised:
        load_registry(f"{name}:registry")
    message = str(raised.value)
    assert message.startswith(f"handlers module '{name}' failed while importing: ")
    assert "ModuleNotFoundError: No module named 'pgq_no_such_dependency'" in message
    assert f"{module_dir / name}.py, line 2)" in message
    assert "--handlers" not in message  # the path was right; the hint would mislead


@pytest.mark.parametrize(
    "body, error, line",
    [
        pytest.param("x = 1\nregistry = undefined_name\n", "NameError: name 'undefined_name'", 2,
                     id="name-error"),
        pytest.param("x = 1\n\ndef broken(:\n", "SyntaxError: ", 3, id="syntax-error"),
        pytest.param("from json import no_such_name\n", "ImportError: cannot import name", 1,
                     id="import-error"),
    ],
)  # fmt: skip
def test_a_handlers_module_error_names_its_file_and_line(
    module_dir: Path, body: str, error: str, line: int
) -> None:
    name = _module(module_dir, body)
    with pytest.raises(RegistryError) as raised:
        load_registry(f"{name}:registry")
    assert error in str(raised.value)
    assert f"{module_dir / name}.py, line {line})" in str(raised.value)


def test_an_error_in_a_module_the_handlers_module_imports_names_that_module(
    module_dir: Path,
) -> None:
    helper = _module(module_dir, "def f():\n    pass\nraise KeyError('DB_URL')\n")
    name = _module(module_dir, f"import {helper}\n")
    with pytest.raises(RegistryError, match=rf"KeyError: 'DB_URL' \(.*{helper}\.py, line 3\)"):
        load_registry(f"{name}:registry")


def test_a_missing_package_of_the_path_is_a_bad_handlers_value() -> None:
    with pytest.raises(
        RegistryError, match=r"cannot import handlers module 'pgq_nope.jobs'.*--handlers"
    ):
        load_registry("pgq_nope.jobs:registry")


def test_load_registry_missing_attribute() -> None:
    with pytest.raises(RegistryError, match=r"module 'json' has no attribute 'registry'"):
        load_registry("json:registry")


def test_load_registry_attribute_that_is_not_a_registry() -> None:
    with pytest.raises(RegistryError, match=r"'json:dumps' is a function, not a pgqueue.Registry"):
        load_registry("json:dumps")


@pytest.mark.parametrize(
    "event_type",
    ["y" * 129, "order placed", "ordér.placed", "order.placed\n", "", ".order", "a\x00b"],
)
def test_an_event_type_the_outbox_refuses_is_refused_at_registration(event_type: str) -> None:
    registry = Registry()

    async def handle(payload: dict[str, Any]) -> None: ...

    with pytest.raises(RegistryError, match=r"event type .* must be 1-128 characters: ASCII"):
        registry.on(event_type)(handle)
    assert registry.event_types == ()  # nothing half-registered


@pytest.mark.parametrize(
    ("name", "why"),
    [
        ("h" * 129, "1-128 characters"),
        ("a\x00b", "NUL"),
        ("a\ud800b", "lone surrogate"),
        ("*", "reserved"),
    ],
)
def test_a_handler_name_the_database_cannot_store_is_refused(name: str, why: str) -> None:
    async def handle(payload: dict[str, Any]) -> None: ...

    with pytest.raises(RegistryError, match=why):
        Registry().on("order.placed", name=name)(handle)


def test_the_longest_event_type_and_handler_name_are_accepted() -> None:
    registry = Registry()

    async def handle(payload: dict[str, Any]) -> None: ...

    registry.on("y" * 128, name="h" * 128)(handle)
    registry.on("Order_2/v1:placed-x.y", name="envoi.reçu")(handle)  # handler names: any text
    assert len(registry.event_types) == 2
