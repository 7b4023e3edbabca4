"""User-facing errors.

Every failure a user can cause (bad input, missing files, a broker that is down) is raised as a
``FleetsimError``; the CLI prints its one line and exits non-zero, never a traceback.
"""

from __future__ import annotations

import re

LONG_VALUE = 200  # a value in an error line longer than this (a path rarely is) ...
KEPT_CHARS = 80  # ... shows this much of its start, then how long it was
# a quoted value (repr or JSON, quotes inside escaped; not an apostrophe: broker's) or any unbroken run of text
_N, _M = LONG_VALUE - 1, LONG_VALUE + 1  # inside the quotes; a run without them
_LONG = re.compile(rf"(?<!\w)(?:'(?:[^'\\]|\\.){{{_N},}}'|\"(?:[^\"\\]|\\.){{{_N},}}\")(?!\w)|\S{{{_M},}}")


def cut_long_values(text: str) -> str:
    """``text`` with each value longer than LONG_VALUE cut to its first KEPT_CHARS and its length: a
    5,000-character value a user passed stays one readable line (``'aaaa…' (5,002 characters)``)."""
    return _LONG.sub(lambda m: f"{m.group()[:KEPT_CHARS]}… ({len(m.group()):,} characters)", text)


class FleetsimError(Exception):
    """An error whose message says what is wrong and how to fix it, in one line; values in it longer than
    LONG_VALUE are cut here, for every error, whoever formatted them."""

    exit_code = 2

    def __init__(self, what: str, fix: str | None = None) -> None:
        what, fix = cut_long_values(what), None if fix is None else cut_long_values(fix)
        self.what = what
        self.fix = fix
        super().__init__(what if fix is None else f"{what}; {fix}")


class PkiError(FleetsimError):
    """The PKI directory is missing, incomplete or asked to do something it cannot."""


class ScenarioError(FleetsimError):
    """A scenario file is unreadable or invalid."""


class BrokerError(FleetsimError):
    """A broker cannot be started, reached or configured."""


class TlsStackError(FleetsimError):
    """A TLS stack cannot do what it was asked (a group or key type its OpenSSL lacks, a missing package)."""


class RunInterrupted(FleetsimError):
    """Ctrl-C or SIGTERM ended a command after it kept what it had (a sweep's finished cells): exit 130 or 143."""

    def __init__(self, what: str, fix: str | None = None, *, exit_code: int = 130) -> None:
        super().__init__(what, fix)
        self.exit_code = exit_code
