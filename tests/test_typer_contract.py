"""What fleetsim's one-line errors rely on in typer, checked against the typer installed.

``fleetsim.cli.main`` catches click's exception classes to turn usage mistakes into one line. typer >= 0.2x
vendors click under the private ``typer._click`` (older ones use click itself), so the CLI imports whichever is
there. If typer moves or renames them, these tests fail here, before a user meets a traceback.
"""

from __future__ import annotations

import pytest
import typer

from fleetsim import cli


def _app() -> typer.Typer:
    app = typer.Typer(no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)

    @app.command()
    def go(count: int = typer.Option(..., "--count")) -> None:
        """A command with one required option."""

    @app.command()
    def other() -> None:
        """A second command, so that typer keeps sub-commands."""

    return app


def test_a_bad_option_raises_the_usage_error_the_cli_catches() -> None:
    with pytest.raises(cli.UsageError) as caught:
        _app()(["go", "--bogus"], standalone_mode=False)
    assert "--bogus" in cli.usage_line(caught.value)


def test_a_bad_value_is_a_usage_error_too() -> None:
    with pytest.raises(cli.UsageError):
        _app()(["go", "--count", "many"], standalone_mode=False)


def test_no_arguments_raises_the_help_error_the_cli_answers_with_exit_0() -> None:
    with pytest.raises(cli.NoArgsIsHelpError):
        _app()([], standalone_mode=False)


def test_usage_errors_are_click_exceptions() -> None:
    assert issubclass(cli.UsageError, cli.ClickException)
    assert issubclass(cli.NoArgsIsHelpError, cli.UsageError)
