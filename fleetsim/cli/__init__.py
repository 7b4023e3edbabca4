"""The ``fleetsim`` command line: one typer sub-app per job, errors as one line."""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from fleetsim import __version__
from fleetsim.errors import FleetsimError

app = typer.Typer(
    name="fleetsim",
    help="Simulate fleets of mutual-TLS MQTT e-health devices and measure what certificates cost a broker.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
err = Console(stderr=True, highlight=False)


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
    from fleetsim.cli import pki

    app.add_typer(pki.app, name="pki")
    for name in ("broker", "run"):
        try:
            module = __import__(f"fleetsim.cli.{name}", fromlist=["register"])
        except ModuleNotFoundError:
            continue
        module.register(app)


def main() -> None:
    """Entry point: run the app, turning FleetsimError into one clear line and a non-zero exit."""
    _register()
    try:
        app(standalone_mode=False)
    except FleetsimError as exc:
        err.print(f"[bold red]error:[/] {exc}", soft_wrap=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        err.print("aborted")
        sys.exit(130)
    except Exception as exc:  # click's usage errors arrive here in non-standalone mode
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise
