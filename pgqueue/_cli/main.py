"""The ``pgqueue`` command: options -> settings -> one library call -> output / exit code.

User errors (PgQueueError, bad options) print one line and exit non-zero; anything else is a
bug and keeps its traceback.
"""

import sys

import click

from .._errors import PgQueueError
from .admin import enqueue_cmd, migrate_cmd, prune_cmd, roles_cmd, status_cmd
from .common import cli, echo_err
from .dashboard import dashboard_cmd
from .events import events_group
from .flow import cancel_cmd, pause_cmd, reschedule_cmd, resume_cmd, wait_cmd
from .limits import limits_cmd
from .relay import relay_cmd
from .schedule import schedules_cmd
from .steer import discard_cmd, replay_cmd, retry_cmd
from .worker import demo_cmd, worker_cmd
from .workers import workers_cmd

__all__ = ["cli", "main"]

# Every command of `pgqueue`, registered here and nowhere else (`--help` sorts them by name).
COMMANDS = [
    worker_cmd,
    demo_cmd,
    relay_cmd,
    dashboard_cmd,
    migrate_cmd,
    roles_cmd,
    enqueue_cmd,
    status_cmd,
    prune_cmd,
    events_group,
    retry_cmd,
    discard_cmd,
    replay_cmd,
    cancel_cmd,
    wait_cmd,
    reschedule_cmd,
    pause_cmd,
    resume_cmd,
    limits_cmd,
    schedules_cmd,
    workers_cmd,
]
for _command in COMMANDS:
    cli.add_command(_command)


def main() -> None:
    """Console entry point: one line per user error, exit 1 (2 for usage errors)."""
    try:
        cli.main(standalone_mode=False, prog_name="pgqueue")
    except click.exceptions.NoArgsIsHelpError as exc:
        click.echo(exc.ctx.get_help() if exc.ctx else str(exc))
        sys.exit(2)
    except click.UsageError as exc:
        command = exc.ctx.command_path if exc.ctx else "pgqueue"
        echo_err(f"{exc.format_message()} (see '{command} --help')")
        sys.exit(2)
    except click.ClickException as exc:
        echo_err(exc.format_message())
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        echo_err("aborted")
        sys.exit(130)
    except PgQueueError as exc:
        echo_err(str(exc))
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
