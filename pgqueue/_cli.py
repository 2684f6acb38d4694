"""The ``pgqueue`` command: options -> settings -> one library call -> output / exit code.

User errors (PgQueueError, bad options) print one line and exit non-zero; anything else is a
bug and keeps its traceback.
"""

import sys

import click

from . import (  # noqa: F401  (they register their commands)
    _cli_admin,
    _cli_dashboard,
    _cli_events,
    _cli_flow,
    _cli_limits,
    _cli_relay,
    _cli_schedule,
    _cli_steer,
    _cli_worker,
    _cli_workers,
)
from ._cli_common import cli, echo_err
from ._errors import PgQueueError

__all__ = ["cli", "main"]


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
