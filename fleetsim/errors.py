"""User-facing errors.

Every failure a user can cause (bad input, missing files, a broker that is down) is raised as a
``FleetsimError``; the CLI prints its one line and exits non-zero, never a traceback.
"""

from __future__ import annotations


class FleetsimError(Exception):
    """An error whose message says what is wrong and how to fix it, in one line."""

    exit_code = 2

    def __init__(self, what: str, fix: str | None = None) -> None:
        self.what = what
        self.fix = fix
        super().__init__(what if fix is None else f"{what}; {fix}")


class PkiError(FleetsimError):
    """The PKI directory is missing, incomplete or asked to do something it cannot."""


class ScenarioError(FleetsimError):
    """A scenario file is unreadable or invalid."""


class BrokerError(FleetsimError):
    """A broker cannot be started, reached or configured."""


class RunInterrupted(FleetsimError):
    """Ctrl-C or SIGTERM ended a command after it kept what it had (a sweep's finished cells): exit 130 or 143."""

    def __init__(self, what: str, fix: str | None = None, *, exit_code: int = 130) -> None:
        super().__init__(what, fix)
        self.exit_code = exit_code
