"""The ``fleetsim`` command line: one typer sub-app per job, errors as one line."""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from typing import Any

import typer
from rich.console import Console
from rich.text import Text

from fleetsim import __version__, lifecycle
from fleetsim.errors import FleetsimError

# typer >= 0.2x vendors its own click (private: tests/test_typer_contract.py fences what is used), older ones use
# click itself (which Dask's packages also install)
_click = importlib.import_module("typer._click.exceptions" if importlib.util.find_spec("typer._click")
                                 else "click.exceptions")
ClickException, NoArgsIsHelpError, UsageError = _click.ClickException, _click.NoArgsIsHelpError, _click.UsageError

app = typer.Typer(
    name="fleetsim",
    help="Simulate fleets of mutual-TLS MQTT e-health devices and measure what certificates cost a broker.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
err = Console(stderr=True, highlight=False, markup=False)  # user text is never read as markup


def _version(value: bool) -> None:
    if value:
        typer.echo(f"fleetsim {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    """fleetsim: every device has its own X.509 identity; the broker requires it."""


def _register() -> None:
    from fleetsim.cli import broker, pki, rehearse, report, run, sweep

    app.add_typer(pki.app, name="pki")
    broker.register(app)
    run.register(app)
    rehearse.register(app)
    sweep.register(app)
    report.register(app)


def usage_line(exc: Any) -> str:
    """click's usage errors span usage, hint and message; a user needs the message and where to look."""
    where = exc.ctx.command_path if exc.ctx else "fleetsim"
    return f"{exc.format_message().rstrip('.')}; see `{where} --help`"


def main() -> None:
    """Entry point: every error a user can cause becomes one line and a non-zero exit, never a traceback.
    SIGTERM ends a command as Ctrl-C does (fleetsim.lifecycle), with exit code 143."""
    lifecycle.raise_on_sigterm()
    _register()
    try:
        code = app(standalone_mode=False)  # a typer.Exit inside a command comes back as its code
    except NoArgsIsHelpError:  # `fleetsim`, `fleetsim pki`: the help was the answer
        sys.exit(0)
    except BrokenPipeError:  # `fleetsim pki list --json | head -1`: the reader had enough
        _quiet_stdout()
        sys.exit(0)
    except FleetsimError as exc:
        _fail(str(exc), exc.exit_code)
    except UsageError as exc:
        _fail(usage_line(exc), 2)
    except ClickException as exc:
        _fail(exc.format_message(), exc.exit_code)
    except KeyboardInterrupt:
        _fail(*lifecycle.interrupted_exit())
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        _fail("aborted", 130)
    if code in (lifecycle.INTERRUPT_EXIT, lifecycle.TERMINATE_EXIT):  # typer hands back Ctrl-C inside a command
        _fail(*lifecycle.interrupted_exit())  # as its code, without raising: say so in one line
    sys.exit(code if isinstance(code, int) else 0)


def _fail(line: str, code: int) -> None:
    err.print(Text.assemble(("error: ", "bold red"), line), soft_wrap=True)
    sys.exit(code)


def _quiet_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush does not fail on the closed pipe again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
