"""The report's figures as drawn (matplotlib's Agg canvas, no browser): what a reader sees must be legible."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from fleetsim.report import plots


def cdf(lo: float, hi: float, n: int = 200) -> tuple[np.ndarray, np.ndarray]:
    x = np.geomspace(lo, hi, n)
    return x, np.arange(1, n + 1) / n


@pytest.mark.parametrize("lo, hi", [(0.15, 0.9), (1.8, 14.0), (0.012, 2.5), (0.3, 3000.0), (4.0, 6.0), (0.01, 30000.0)])
def test_log_axis_tick_labels_never_overlap(lo: float, hi: float) -> None:
    """tcp and tls CDFs spanning under a decade got a label on every minor tick (2x10^-1 3x10^-1 4x10^-1 ...),
    printed over each other."""
    fig = plots.phase_cdfs_figure([("run", {p: cdf(lo, hi) for p in ("setup", "wait", "tcp", "tls", "mqtt",
                                                                       "total")})])
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()  # type: ignore[attr-defined]
    for ax in fig.axes:
        boxes = [t.get_window_extent(renderer) for t in ax.get_xticklabels(minor=False) + ax.get_xticklabels(
            minor=True) if t.get_visible() and t.get_text() and lo * 0.9 <= t.get_position()[0] <= hi * 1.1]
        assert len(boxes) >= 2, [t.get_text() for t in ax.get_xticklabels()]  # the axis is still read
        boxes.sort(key=lambda b: b.x0)
        assert all(a.x1 < b.x0 for a, b in itertools.pairwise(boxes)), \
            [t.get_text() for t in ax.get_xticklabels(minor=True) if t.get_text()]
