"""The report's figures, drawn with matplotlib from :mod:`fleetsim.results.figure_data`'s data. Drawing only:
every number drawn was computed there. Each function takes one entry per run (one for a report, several for a
comparison, overlaid in the run's colour) and returns a Figure whose title says what span and unit it shows.

Figures are built on matplotlib's Agg canvas directly (no pyplot): no display, no global state.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from fleetsim.results.figure_data import FLOOR_MS, Machine, Overhead, RehearsalTimeline, Timeline
from fleetsim.results.summary import LAG_P99_LATE_MS

WIDTH_IN = 11.0
DPI = 100
RUN_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")
CLASS_COLOURS = ("#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf", "#ff7f0e", "#7f7f7f")
Marks = Sequence[tuple[float, str]]


def colour(i: int) -> str:
    return RUN_COLOURS[i % len(RUN_COLOURS)]


class ReportFigure(Figure):
    """A matplotlib Figure that shows itself in Jupyter as the PNG the HTML page embeds: drawn on Agg with no
    pyplot, it has no backend that would display it (``run.figures()["timeline"]`` as a cell's last line)."""

    def _repr_png_(self) -> bytes:
        return png(self)


def _figure(height_in: float) -> Figure:
    fig = ReportFigure(figsize=(WIDTH_IN, height_in), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def _events(ax: Axes, marks: Marks, c: str, *, label: bool) -> None:
    """Dashed vertical lines at each timed event, named along the top of the axes when ``label``."""
    for at, action in marks:
        ax.axvline(at, color=c, linestyle="--", linewidth=1, alpha=0.8)
        if label:
            ax.annotate(action, (at, 1.0), xycoords=("data", "axes fraction"), xytext=(2, -2),
                        textcoords="offset points", va="top", fontsize=8, color=c, rotation=90)


def _log_ms_axis(ax: Axes) -> None:
    """A log x axis labelled in plain ms (0.2, 1, 50) at steps the span leaves room for, minor ticks unlabelled:
    matplotlib's default labels every minor tick of a span under a decade (2x10^-1 3x10^-1 ...), over each other."""
    ax.set_xscale("log")
    lo, hi = ax.get_xlim()
    decades = np.log10(hi / lo) if lo > 0 and hi > lo else 1.0
    subs = (1.0,) if decades > 2 else (1.0, 2.0, 5.0) if decades > 1 else (1.0, 2.0, 3.0, 5.0) \
        if decades > 0.5 else tuple(float(k) for k in range(1, 10))
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=subs, numticks=30))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())


def phase_cdfs_figure(runs: Sequence[tuple[str, dict[str, tuple[np.ndarray, np.ndarray]]]]) -> Figure:
    """One panel per phase, one CDF per run."""
    phases = list(dict.fromkeys(p for _, cdfs in runs for p in cdfs))
    fig = _figure(5.5)
    fig.suptitle(f"Connect phases: CDF over connected attempts, whole run (ms, log scale; values below "
                 f"{FLOOR_MS:g} ms drawn at {FLOOR_MS:g})")
    axes = fig.subplots(2, 3, squeeze=False).ravel()
    for ax, phase in zip(axes, phases, strict=False):
        for i, (label, cdfs) in enumerate(runs):
            x, y = cdfs.get(phase, (np.empty(0), np.empty(0)))
            if x.size:
                ax.step(x, y, where="post", color=colour(i), label=f"{label} (n={_n(y, x)})")
        ax.axhline(0.99, color="#999999", linestyle=":", linewidth=1)
        _log_ms_axis(ax)
        ax.set_ylim(0, 1.01)
        ax.set_title(phase, fontsize=10)
        ax.set_xlabel("ms")
        ax.grid(True, which="major", alpha=0.3)
        if not any(cdfs.get(phase, (np.empty(0),))[0].size for _, cdfs in runs):
            ax.text(0.5, 0.5, "no connected attempts", ha="center", transform=ax.transAxes)
    for ax in axes[len(phases):]:
        ax.set_visible(False)
    axes[0].set_ylabel("share of attempts")
    if axes[0].get_legend_handles_labels()[0]:
        axes[0].legend(fontsize=8, loc="lower right")
    return fig


def _n(y: np.ndarray, x: np.ndarray) -> str:
    """The sample count behind a (possibly thinned) CDF: its first step is 1/n."""
    return f"{round(1 / y[0]):,}" if y.size else "0"


def timeline_figure(runs: Sequence[tuple[str, Timeline]], events: Sequence[Marks]) -> Figure:
    """Connected devices over time, and connects and attempts per second, timed events marked."""
    fig = _figure(6.0)
    fig.suptitle("Connections over time (run seconds; per-second counts by when each event happened)")
    top, bottom = fig.subplots(2, 1, sharex=True)
    for i, (label, t) in enumerate(runs):
        c = colour(i)
        top.step(np.r_[0.0, t.second + 1], np.r_[0.0, t.connected], where="pre", color=c, label=label)
        bottom.step(t.second, t.connects, where="post", color=c, label=f"{label}: connects/s (CONNACK)")
        bottom.step(t.second, t.attempts, where="post", color=c, linestyle=":", linewidth=1,
                    label=f"{label}: attempts/s (start)")
        for ax in (top, bottom):
            _events(ax, events[i] if i < len(events) else (), c, label=ax is top)
    top.set_ylabel("devices connected\n(at each second's end)")
    bottom.set_ylabel("per second")
    return _finish(fig, top, bottom)


def failures_figure(runs: Sequence[tuple[str, dict[str, np.ndarray]]], events: Sequence[Marks]) -> Figure:
    """Stacked failed attempts per second by class, one panel per run side by side (same classes, same
    colours, same scale)."""
    classes = list(dict.fromkeys(c for _, by in runs for c in by))
    colours = {c: CLASS_COLOURS[k % len(CLASS_COLOURS)] for k, c in enumerate(classes)}
    fig = _figure(4.0)
    fig.suptitle("Failed attempts per second by failure class (by when they failed; run seconds)")
    axes = fig.subplots(1, len(runs), sharey=True, squeeze=False).ravel()
    for i, (ax, (label, by)) in enumerate(zip(axes, runs, strict=True)):
        bottom = None
        for cls, counts in by.items():
            x = np.arange(counts.size)
            ax.bar(x, counts, width=1.0, align="edge", bottom=bottom, color=colours[cls], label=cls)
            bottom = counts if bottom is None else bottom + counts
        if not by:
            ax.text(0.5, 0.5, "no failed attempts", ha="center", va="center", transform=ax.transAxes)
        _events(ax, events[i] if i < len(events) else (), colour(i), label=True)
        ax.set_title(label, fontsize=10, color=colour(i))
        ax.set_xlabel("run seconds")
        ax.grid(True, axis="y", alpha=0.3)
        if by:
            ax.legend(fontsize=8, loc="upper right")
    axes[0].set_ylabel("failed attempts")
    return fig


def machine_figure(runs: Sequence[tuple[str, Machine]], events: Sequence[Marks],
                   saturated: Sequence[bool]) -> Figure:
    """The simulator's loop lag, its busiest worker and the broker's CPU per second: was the simulator, not
    the broker, the bottleneck?"""
    fig = _figure(5.5)
    title = "Simulator and broker per second (run seconds): loop lag (worst worker) and CPU"
    if any(saturated):
        bad = ", ".join(label for (label, _), s in zip(runs, saturated, strict=True) if s)
        title += f"\nSIMULATOR SATURATED ({bad}): latencies include the simulator's own wait"
    fig.suptitle(title, color="#b00020" if any(saturated) else "black")
    lag, cpu = fig.subplots(2, 1, sharex=True)
    for i, (label, m) in enumerate(runs):
        c = colour(i)
        lag.step(m.second, m.loop_lag_ms, where="post", color=c, label=label)
        cpu.step(m.second, 100 * m.worker_cpu, where="post", color=c, label=f"{label}: busiest worker")
        if m.broker_t.size:
            cpu.plot(m.broker_t, 100 * m.broker_cores, color=c, linestyle="--", label=f"{label}: broker")
        for ax in (lag, cpu):
            _events(ax, events[i] if i < len(events) else (), c, label=ax is lag)
    lag.axhline(LAG_P99_LATE_MS, color="#b00020", linestyle=":", linewidth=1,
                label=f"{LAG_P99_LATE_MS:g} ms: p99 above this = saturated")
    lag.set_ylabel("loop lag, max (ms)")
    cpu.set_ylabel("CPU (% of one core)")
    return _finish(fig, lag, cpu)


def _finish(fig: Figure, *axes: Axes) -> Figure:
    """Two stacked time axes over run seconds, from zero, gridded, each with its legend."""
    axes[-1].set_xlabel("run seconds")
    for ax in axes:
        ax.grid(True, alpha=0.3)
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8, loc="upper right")
    return fig


def overhead_figure(o: Overhead) -> Figure:
    """For one setting of a sweep: each cell's broker CPU per handshake and p99 connect time by the setting's
    value (dots: cells; bars: their median)."""
    fig = _figure(3.6)
    fig.suptitle(f"By {o.setting}: broker CPU per handshake (ms, storm window) and p99 connect time\n"
                 "(ms, connected attempts); dot = one cell, bar = median of its cells", fontsize="medium")
    for ax, data, ylabel in zip(fig.subplots(1, 2), (o.cpu_ms, o.p99_ms),
                                ("CPU per handshake (ms)", "p99 total connect (ms)"), strict=True):
        for k, vals in enumerate(data):
            a = np.asarray(vals, dtype=float)
            a = a[np.isfinite(a)]
            if a.size:
                ax.bar(k, float(np.median(a)), width=0.6, color=colour(k), alpha=0.35)
                ax.scatter(np.full(a.size, k) + np.linspace(-0.15, 0.15, a.size), a, color=colour(k), zorder=3)
            else:
                ax.text(k, 0, "not measured", ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(o.values)), o.values)
        ax.set_xlabel(o.setting)
        ax.set_ylabel(ylabel)
        ax.set_ylim(bottom=0)
        ax.grid(True, axis="y", alpha=0.3)
    return fig


def rehearsal_figure(t: RehearsalTimeline) -> Figure:
    """Healthy and revoked devices connected over time, the revoked ones' refusals, the rehearsal's steps."""
    fig = _figure(3.4)
    fig.suptitle("Revocation rehearsal: devices connected at each second's end, and the revoked lot's refusals "
                 "per second (run seconds)", fontsize="medium")
    ax = fig.subplots()
    ax.plot(t.seconds + 1, t.healthy, label="healthy devices connected")  # a count holds at its second's end
    ax.plot(t.seconds + 1, t.revoked, label="revoked devices connected")
    ax.bar(t.seconds + 0.5, t.refused, width=1.0, color="#d62728", alpha=0.4,  # a count spans its second
           label="revoked devices refused / s")
    for at, action in t.steps:
        ax.axvline(at, color="grey", linestyle="--", linewidth=0.8)
        ax.annotate(action, (at, 1), xycoords=("data", "axes fraction"), rotation=90, fontsize="x-small",
                    va="top", ha="right", color="grey")
    ax.set_xlabel("seconds since t0")
    ax.set_ylabel("devices")
    ax.legend(loc="center right", fontsize="small")
    return fig
