"""How long fleetsim's processes live: a command ends on SIGTERM as on Ctrl-C, and what it starts ends with it.

SIGTERM is what `timeout`, CI runners, systemd and container runtimes send. The CLI turns it into ``Terminated``,
a KeyboardInterrupt, so every path that ends a run cleanly on Ctrl-C (workers stopped and collected, results
written, brokers stopped) does on SIGTERM too; only the exit code differs (130, 143), and the line that says so.

A process fleetsim starts (a run's worker, a broker) must not outlive the one that started it, however that one
ends (a crash, SIGKILL, the OOM killer): on Linux it asks the kernel for a signal when its parent dies
(``PR_SET_PDEATHSIG``). The kernel sends it when the *thread* that forked the child ends, so it is asked for only
when the main thread forks (the runner's case); otherwise the child watches its parent's pid instead. A worker
also has a deadline of its own, the run's end plus ``GRACE_S`` (``HANDOVER_S`` after its shard stopped, if that
is later: a big shard's result still goes over), kept by the kernel (``SIGALRM``, whose default action ends the
process), so load stops even when its orchestrator hangs and never takes its results.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import stat
import sys
import threading
import time
from collections.abc import Callable
from types import FrameType

INTERRUPT_EXIT = 130  # 128 + SIGINT, as a shell reports Ctrl-C
TERMINATE_EXIT = 143  # 128 + SIGTERM
BY_CTRL_C = "interrupted (Ctrl-C)"
BY_SIGTERM = "terminated (SIGTERM)"
GRACE_S = 5.0  # a worker ends at the latest this long after its run's planned end (t0 + duration) ...
HANDOVER_S = 2.0  # ... or this long after its shard stopped, if the stop took all of its drain: its result
PARENT_POLL_S = 0.25  # the watch on the parent's pid, where the kernel's parent-death signal cannot be used
_PR_SET_PDEATHSIG = 1


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread where Ctrl-C raises KeyboardInterrupt (see ``raise_on_sigterm``)."""


_terminated = threading.Event()  # a SIGTERM reached this process's handler


def raise_on_sigterm() -> None:
    """The CLI's: SIGTERM raises Terminated in the main thread, as SIGINT raises KeyboardInterrupt. A process
    forked from this one (a pool's worker) that has not chosen otherwise keeps SIGTERM's default: it ends."""
    owner = os.getpid()

    def handler(signum: int, _frame: FrameType | None) -> None:
        if os.getpid() != owner:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        _terminated.set()
        raise Terminated

    signal.signal(signal.SIGTERM, handler)


def reason(exc: BaseException) -> str:
    """What ended a run, for its summary's ``interrupted``."""
    return BY_SIGTERM if isinstance(exc, Terminated) else BY_CTRL_C


def exit_code(interrupted: str | None) -> int | None:
    """The exit code for a run's ``interrupted``: 130 Ctrl-C, 143 SIGTERM, None for other ends."""
    return {BY_CTRL_C: INTERRUPT_EXIT, BY_SIGTERM: TERMINATE_EXIT}.get(interrupted or "")


def interrupted_exit() -> tuple[str, int]:
    """The CLI's last line and exit code when a KeyboardInterrupt ended a command (typer hands it back as 130,
    whatever raised it): which signal it was, from this process's own handler."""
    return ("terminated", TERMINATE_EXIT) if _terminated.is_set() else ("interrupted", INTERRUPT_EXIT)


# -- children ------------------------------------------------------------------------------------------------
def _prctl() -> Callable[..., int] | None:
    """libc's prctl, looked up here in the parent: a forked child of a threaded process should not dlopen."""
    if not sys.platform.startswith("linux"):
        return None
    with contextlib.suppress(OSError, AttributeError):
        fn: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
        return fn
    return None


_PRCTL = _prctl()


def death_signal_usable() -> bool:
    """Whether a child forked now may ask for a signal at its parent's death: the kernel sends it when the forking
    thread ends, which is the process's end only for the main thread."""
    return _PRCTL is not None and threading.current_thread() is threading.main_thread()


def die_with_parent(parent: int, sig: int) -> bool:
    """In a child just forked from ``parent``: have the kernel send ``sig`` when the parent dies (False where it
    cannot). A parent that died before the request was made is caught by the pid check after it."""
    if _PRCTL is None or _PRCTL(_PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:
        return False
    if os.getppid() != parent:
        os.kill(os.getpid(), sig)
    return True


def watch_parent(parent: int, sig: int) -> None:
    """In a child: a daemon thread that sends ``sig`` to this process once ``parent`` is no longer its parent
    (the fallback where the kernel's parent-death signal cannot be used); checks every PARENT_POLL_S."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_POLL_S)
        os.kill(os.getpid(), sig)

    threading.Thread(target=watch, name="fleetsim-parent-watch", daemon=True).start()


def tie_to_parent(parent: int, sig: int, usable: bool) -> None:
    """In a child forked from ``parent``: end with ``sig`` when it dies, by the kernel's signal where ``usable``
    (decided in the parent: ``death_signal_usable``), else by watching its pid."""
    if not (usable and die_with_parent(parent, sig)):
        watch_parent(parent, sig)


def preexec_tied(sig: int, *then: Callable[[], None]) -> Callable[[], None]:
    """A ``preexec_fn`` for Popen: the program gets ``sig`` when this process dies (kept across exec, unless the
    program changes its credentials: start it as its final user), after running ``then``. Where the kernel's
    signal cannot be used the child is not tied (a watching thread would not survive exec)."""
    parent, usable = os.getpid(), death_signal_usable()

    def preexec() -> None:
        for fn in then:
            fn()
        if usable:
            die_with_parent(parent, sig)

    return preexec


def end_by(deadline: float) -> None:
    """In a worker: the kernel ends this process at wall-clock ``deadline`` (SIGALRM's default action), however
    stuck it is (a loop that never yields, a result no one reads). Clear it with ``signal.setitimer(..., 0)``."""
    signal.signal(signal.SIGALRM, signal.SIG_DFL)
    signal.setitimer(signal.ITIMER_REAL, max(0.001, deadline - time.time()))


def close_inherited_listeners() -> int:
    """In a forked worker: close every listening socket the parent had (its metrics endpoint, a Dask scheduler):
    a worker never accepts connections, and one that kept a copy would hold the port after its parent is gone.
    Returns how many it closed."""
    try:
        fds = [int(name) for name in os.listdir("/proc/self/fd")]
    except OSError:
        return 0
    closed = 0
    for fd in fds:
        with contextlib.suppress(OSError):
            if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                continue
            sock = socket.socket(fileno=fd)
            try:
                listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
            finally:
                sock.detach()
            if listening:
                os.close(fd)
                closed += 1
    return closed
