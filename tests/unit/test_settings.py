"""Settings validation at the edge, and DSN masking for logs and messages."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from pgqueue import WorkerSettings
from pgqueue._settings import (
    dsn_without_password,
    mask_dsn,
    quote_ident,
    validate_queue,
    validate_schema,
)
from pgqueue.errors import ConfigurationError


@pytest.mark.parametrize("name", ["pgqueue", "other_q", "_private", "q1", "a" * 63])
def test_plain_schema_names_are_accepted(name: str) -> None:
    assert validate_schema(name) == name
    assert WorkerSettings(schema_name=name).schema_name == name


@pytest.mark.parametrize(
    "name",
    [
        'pg"queue',
        "pgqueue'",
        'x"; DROP TABLE users; --',
        "pgqueue; DROP SCHEMA public",
        "public.outbox",
        "PgQueue",
        "1queue",
        "with space",
        "",
        "a" * 64,
    ],
)
def test_schema_names_with_quotes_sql_or_odd_characters_are_rejected(name: str) -> None:
    with pytest.raises(ConfigurationError, match="invalid schema name"):
        validate_schema(name)
    with pytest.raises(ConfigurationError, match="invalid schema name"):
        WorkerSettings(schema_name=name)


def test_quote_ident_refuses_what_validation_refuses() -> None:
    assert quote_ident("pgqueue") == '"pgqueue"'
    with pytest.raises(ConfigurationError):
        quote_ident('a"b')


@pytest.mark.parametrize("name", ["default", "emails", "a.b:c-d_e", "Q1"])
def test_queue_names_accepted(name: str) -> None:
    assert validate_queue(name) == name


@pytest.mark.parametrize("name", ["", "-lead", "has space", "q'", "x" * 64])
def test_queue_names_rejected(name: str) -> None:
    with pytest.raises(ConfigurationError, match="invalid queue name"):
        validate_queue(name)
    with pytest.raises(ConfigurationError):
        WorkerSettings(queues=(name,))


@pytest.mark.parametrize(
    "field, value",
    [
        ("concurrency", 0),
        ("concurrency", 10_001),
        ("batch_size", 0),
        ("poll_interval", 0),
        ("lease_seconds", -1),
        ("heartbeat_seconds", 0),
        ("shutdown_timeout", -1),
        ("sync_threads", 0),
        ("sync_threads", 1001),
    ],
)
def test_numeric_settings_out_of_range_are_rejected(field: str, value: float) -> None:
    with pytest.raises(ValidationError, match=field):
        WorkerSettings(**{field: value})


def test_unknown_setting_is_rejected() -> None:
    with pytest.raises(ValidationError, match="concurency"):
        WorkerSettings(concurency=5)  # type: ignore[call-arg]


def test_settings_are_frozen() -> None:
    settings = WorkerSettings()
    with pytest.raises(ValidationError):
        settings.burst = True  # type: ignore[misc]


@pytest.mark.parametrize("heartbeat", [30.0, 45.0])
def test_heartbeat_must_be_shorter_than_the_lease(heartbeat: float) -> None:
    with pytest.raises(ValidationError, match="heartbeat"):
        WorkerSettings(lease_seconds=30, heartbeat_seconds=heartbeat)


def test_heartbeat_defaults_to_a_third_of_the_lease() -> None:
    assert WorkerSettings(lease_seconds=30).heartbeat_interval == 10
    assert WorkerSettings(lease_seconds=30, heartbeat_seconds=2).heartbeat_interval == 2


# -- mask_dsn ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dsn, expected",
    [
        (
            "postgresql://app:s3cret@db.example:5432/shop",
            "postgresql://app:***@db.example:5432/shop",
        ),
        ("postgres://app:p%40ss@10.0.0.1/shop", "postgres://app:***@10.0.0.1/shop"),
        ("postgresql://app:p@ss@host/shop", "postgresql://app:***@host/shop"),
        (
            "postgresql://app@host/shop?sslmode=require&password=s3cret",
            "postgresql://app@host/shop?sslmode=require&password=***",
        ),
        (
            "postgresql://app@host/shop?PASSWORD=s3cret&sslmode=require",
            "postgresql://app@host/shop?PASSWORD=***&sslmode=require",
        ),
        (
            "host=db user=app password=s3cret dbname=shop",
            "host=db user=app password=*** dbname=shop",
        ),
        ("host=db password = 's3 cret' dbname=shop", "host=db password = *** dbname=shop"),
        ("host=db PassWord=s3cret", "host=db PassWord=***"),
    ],
)
def test_mask_dsn_hides_the_password(dsn: str, expected: str) -> None:
    masked = mask_dsn(dsn)
    assert masked == expected
    assert "s3cret" not in masked and "s3 cret" not in masked


@pytest.mark.parametrize(
    "dsn, expected",
    [
        ("postgresql://app:s3cret@db.example:5432/shop", "postgresql://app@db.example:5432/shop"),
        ("postgresql://app:p@ss@host/shop", "postgresql://app@host/shop"),
        ("postgresql://app@h/shop?sslmode=require&password=s3cret", "postgresql://app@h/shop?sslmode=require"),
        ("postgresql://app@h/shop?PASSWORD=s3cret&sslmode=require", "postgresql://app@h/shop?sslmode=require"),
        ("host=db user=app password=s3cret dbname=shop", "host=db user=app dbname=shop"),
        ("host=db password = 's3 cret' dbname=shop", "host=db dbname=shop"),
    ],
)  # fmt: skip
def test_dsn_without_password_drops_it_for_commands_to_paste(dsn: str, expected: str) -> None:
    assert dsn_without_password(dsn) == (expected, True)


def test_dsn_without_password_leaves_a_dsn_without_one() -> None:
    dsn = "postgresql://app@db.example:5432/shop?sslmode=require"
    assert dsn_without_password(dsn) == (dsn, False)


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://postgres@127.0.0.1:5432/postgres",
        "host=localhost dbname=x",
        "postgresql:///db",
    ],
)
def test_mask_dsn_leaves_a_dsn_without_password_alone(dsn: str) -> None:
    assert mask_dsn(dsn) == dsn


def test_mask_dsn_of_an_unparseable_url_reveals_nothing() -> None:
    masked = mask_dsn("postgresql://app:s3cret@[::1/db")
    assert "s3cret" not in masked


def test_the_sync_threads_option_reads_its_default_and_bounds_from_the_model() -> None:
    import click

    from pgqueue._cli.worker import worker_cmd

    [option] = [p for p in worker_cmd.params if p.name == "sync_threads"]
    field = WorkerSettings.model_fields["sync_threads"]
    assert isinstance(option.type, click.IntRange)
    # Not given (None): the model's default applies, and --help shows it.
    assert (option.default, option.type.min, option.type.max) == (None, 1, 1000)
    assert f"[default: {field.default}]" in (option.help or "")
    assert WorkerSettings().sync_threads == 10


# Fields with no option of their own: --schema (every command's) sets schema_name, --poll-only
# sets listen; worker_id is for embedding (each process makes its own).
NOT_OPTIONS = {"schema_name", "listen", "worker_id"}


def test_every_worker_setting_is_a_worker_option_with_the_models_bounds() -> None:
    """The worker command restates no default and no bound: each setting's option is "not
    given" by default and its range is the model's (--poll-interval was >= 0.001 against the
    model's > 0, --lease >= 0.1, --heartbeat <= 86,400 before)."""
    import click

    from pgqueue._cli.worker import worker_cmd

    options = {p.name: p for p in worker_cmd.params}
    for name, field in WorkerSettings.model_fields.items():
        if name in NOT_OPTIONS:
            continue
        option = options[name]
        assert option.default in (None, False), name  # flags are off unless given
        bounds = {k: getattr(m, k) for m in field.metadata for k in ("ge", "gt", "le", "lt")
                  if hasattr(m, k)}  # fmt: skip
        if bounds:
            assert isinstance(option.type, (click.IntRange, click.FloatRange)), name
            assert option.type.min == bounds.get("ge", bounds.get("gt")), name
            assert option.type.max == bounds.get("le", bounds.get("lt")), name
            assert option.type.min_open == ("gt" in bounds), name


def test_worker_options_not_given_leave_the_models_defaults() -> None:
    from pgqueue._cli.worker import split_options, worker_cmd

    ctx = worker_cmd.make_context("worker", [])
    settings, run = split_options({k: v for k, v in ctx.params.items() if k != "handlers_path"})
    assert settings == WorkerSettings()
    assert (run.dsn, run.processes) == (None, 1)
    ctx = worker_cmd.make_context("worker", ["--poll-only", "--batch-size", "5", "--queue", "a"])
    settings, _ = split_options({k: v for k, v in ctx.params.items() if k != "handlers_path"})
    assert (settings.listen, settings.batch_size, settings.queues) == (False, 5, ("a",))
