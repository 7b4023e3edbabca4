"""Shared by the benchmark scripts (run as scripts: this folder is on sys.path)."""

from __future__ import annotations

import multiprocessing as mp
from typing import Any


def in_child(fn: Any, *args: Any) -> dict[str, float]:
    """Run ``fn`` in a fresh forked process, so its RSS growth is its own (fork: arguments are not pickled)."""
    ctx = mp.get_context("fork")
    q = ctx.SimpleQueue()
    p = ctx.Process(target=lambda: q.put(fn(*args)))
    p.start()
    out: dict[str, float] = q.get()
    p.join()
    return out
