"""The terminal's view of a run: a spinner while it prepares, one live progress line while devices run, and
a plain line every few seconds instead when there is no terminal (CI, logs). CLI only: the API is silent."""

from __future__ import annotations

import time

from rich.console import Console
from rich.live import Live
from rich.status import Status
from rich.text import Text

from fleetsim.runner.progress import Progress, View

PLAIN_EVERY_S = 10.0  # without a terminal: a progress line this often
PLAIN_STEP_EVERY_S = 5.0


class ConsoleReporter:
    """fleetsim.runner.progress.Reporter for a rich Console; every text is shown as it is, never as markup."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._status: Status | None = None
        self._live: Live | None = None
        self._view: View | None = None
        self._last_line = 0.0
        self._last_step = (0.0, "")

    def note(self, text: str) -> None:
        self._stop_status()
        self.console.print(Text(text))

    def step(self, text: str) -> None:
        if self.console.is_terminal:
            if self._status is None:
                self._status = self.console.status(Text(text))
                self._status.start()
            else:
                self._status.update(Text(text))
            return
        now = time.monotonic()
        if text.split(":")[0] != self._last_step[1].split(":")[0] or now - self._last_step[0] >= PLAIN_STEP_EVERY_S:
            self._last_step = (now, text)
            self.console.print(Text(text))

    def progress(self, p: Progress) -> None:
        self._stop_status()
        if self._view is None:
            self._view = View(devices=p.devices, duration=p.duration)
        line = self._view.render(p.state, elapsed=p.elapsed, events=p.events)
        if self.console.is_terminal:
            if self._live is None:
                self._live = Live(console=self.console, refresh_per_second=4, transient=True)
                self._live.start()
            self._live.update(line)
        elif p.elapsed > 0 and time.monotonic() - self._last_line >= PLAIN_EVERY_S:
            self._last_line = time.monotonic()
            self.console.print(line)

    def done(self) -> None:
        """The run ended: the next progress (a sweep's next run) gets a view of its own size and duration."""
        self._stop_status()
        if self._live is not None:
            self._live.stop()
            self._live = None
        self._view = None
        self._last_line = 0.0

    def _stop_status(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None
