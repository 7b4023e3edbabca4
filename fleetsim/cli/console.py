"""The console the CLI prints its tables on."""

from __future__ import annotations

import os

from rich.console import Console

PIPED_WIDTH = 160


def tables() -> Console:
    """stdout for tables; user text is never read as markup. Piped into a file or a CI log it is 160 columns
    wide, not rich's default 80, which wraps a sweep's thirteen columns into ellipses (COLUMNS still wins)."""
    console = Console(markup=False, highlight=False)
    if console.is_terminal or "COLUMNS" in os.environ:
        return console
    return Console(markup=False, highlight=False, width=PIPED_WIDTH)
