"""The HTML report and `fleetsim compare`, end to end: real runs against the embedded broker, the CLI as a user
calls it, and the page looked at in a real browser (headless Chromium from Debian's packages)."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fleetsim.report import html_page
from fleetsim.report.run_results import load_run
from fleetsim.results import figure_data
from fleetsim.runner.orchestrate import run_scenario
from fleetsim.scenario import parse

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]
ROOT = Path(__file__).parent.parent
NAME = 'ward [red]<b>&"x"</b>'  # rich markup and HTML in one scenario name
CHROMIUM = shutil.which("chromium")
IMG = re.compile(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


def scenario(name: str, auth: str, extra: str = "") -> str:
    return f"""
name = {json.dumps(name)}
description = "<script>alert(1)</script> a small ward"
seed = 3
duration = 6
connect_timeout = 10
workers = 1
[broker]
target = "embedded"
auth = "{auth}"
[mqtt]
qos_telemetry = 1
[arrival]
pattern = "linear"
rate = 40
[reconnect]
initial = 0.2
cap = 1
max_attempts = 2
[[fleet]]
model = "pulse-oximeter"
count = 30
lot = "rep"
{extra}
"""


FAULTS_AND_RESTART = '[faults]\nexpired = 0.1\nunknown_ca = 0.1\n[[events]]\nat = 3\naction = "restart-broker"\n'


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two real runs: A with mTLS, faulty identities and a broker restart; B with server-only TLS."""
    base = tmp_path_factory.mktemp("report")
    out = []
    for text in (scenario(NAME, "mtls", FAULTS_AND_RESTART), scenario("ward-tls", "tls")):
        run_dir, _ = run_scenario(parse(text, "report.toml"), pki=base / "pki", out_dir=base / "out")
        out.append(run_dir)
    return out[0], out[1]


def fleetsim(*args: str | Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}  # rich's table width without a terminal: rows on one line each
    return subprocess.run([sys.executable, "-m", "fleetsim", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env=env)


def images(page: str) -> list[bytes]:
    return [base64.b64decode(m) for m in IMG.findall(page)]


def assert_self_contained(page: str) -> None:
    assert page.startswith("<!DOCTYPE html>")
    for fetch in ("<script", "<link", "http://", "https://", "@import", "url("):
        assert fetch not in page, fetch
    assert all(src.startswith("data:image/png;base64,") for src in re.findall(r'src="([^"]*)"', page))


def test_figure_data_from_real_rows_matches_the_run(runs: tuple[Path, Path]) -> None:
    run = load_run(runs[0])
    s, series = run.summary.raw, run.series_arrays
    assert s["outcomes"].get("alert_expired") and s["events"][0]["action"] == "restart-broker"
    n = len(series["second"])
    by = figure_data.failures_by_class(run.attempt_arrays, run.t0, n)
    assert {"alert_expired", "alert_unknown_ca"} <= set(by)
    assert np.asarray(sum(by.values())).tolist() == series["failures"].tolist()  # the same bins as series.parquet
    for phase, (x, y) in figure_data.phase_cdfs(run.attempt_arrays).items():
        assert round(1 / y[0]) == s["phases_ms"][phase]["n"] and y[-1] == 1.0
        assert x[-1] == pytest.approx(s["phases_ms"][phase]["max"], abs=1e-3)
    t = figure_data.timeline(series)
    covered = series["covered_s"] > 0
    assert t.connected.tolist() == series["connected"][covered].tolist()
    assert t.connects.sum() >= s["outcomes"]["connected"] - series["connects"][~covered].sum()
    assert figure_data.event_marks(s) == [(s["events"][0]["fired_at_s"], "restart-broker")]
    bt, cores = figure_data.broker_cpu_rate(run.broker_samples)
    assert bt.size >= 4 and (cores >= 0).all() and cores.max() > 0


def test_report_html_is_one_self_contained_page_with_its_plots(runs: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "run.html"
    r = fleetsim("report", runs[0], "--html", out)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"report: {out}")
    page = out.read_text()
    assert_self_contained(page)
    pngs = images(page)
    assert len(pngs) == 4 and all(p.startswith(b"\x89PNG\r\n\x1a\n") and len(p) > 20_000 for p in pngs)
    assert "&lt;b&gt;&amp;&quot;x&quot;&lt;/b&gt;" in page and "<b>" not in page
    assert "&lt;script&gt;alert(1)" in page  # the scenario as run, escaped
    for words in ("x in run seconds", "connected attempts only", "x in ms (log)", "loop lag", "restart-broker",
                  "Faulty identities", "alert_expired"):
        assert words in page, words
    assert "SIMULATOR SATURATED" not in page


def test_a_saturated_simulator_is_marked_on_the_page(runs: tuple[Path, Path], tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(runs[1], run_dir)
    s = json.loads((run_dir / "summary.json").read_text())
    s["simulator"].update(saturated=True, warning="the simulator was the bottleneck: lag p99 80 ms")
    (run_dir / "summary.json").write_text(json.dumps(s))
    page = html_page.page_for(run_dir)
    assert '<div class="alert">SIMULATOR SATURATED. the simulator was the bottleneck: lag p99 80 ms</div>' in page
    assert page.count("the simulator was the bottleneck") == 1  # not again among the warnings


def test_compare_shows_the_differences_in_the_terminal_and_as_html(runs: tuple[Path, Path], tmp_path: Path) -> None:
    out = tmp_path / "cmp.html"
    r = fleetsim("compare", *runs, "--html", out)
    assert r.returncode == 0, r.stderr
    text = r.stdout
    assert f"A {NAME}" in text  # printed as it is, not read as markup
    for words in ("Headline figures", "B vs A", "total p99", "broker CPU per handshake", "broker.auth", "mtls",
                  "alert_expired", f"comparison: {out}"):
        assert words in text, words
    page = out.read_text()
    assert_self_contained(page)
    assert len(images(page)) == 4
    assert "Scenario settings that differ" in page and "<td class=\"text\">broker.auth</td>" in page
    assert re.search(r'<td class="(better|worse)">[+-]', page)  # differences carry their verdict
    j = fleetsim("compare", *runs, "--json")
    data = json.loads(j.stdout)
    assert data["settings"]["broker.auth"] == ["mtls", "tls"]
    row = next(f for f in data["figures"] if f["figure"] == "attempts")
    assert row["delta"] == [row["values"][1] - row["values"][0]]


def test_a_sweep_directory_gets_its_overhead_page(runs: tuple[Path, Path], tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    cells = []
    for name, run_dir, auth in (("mtls", runs[0], "mtls"), ("tls", runs[1], "tls")):
        shutil.copytree(run_dir, sweep / name)
        cells.append({"name": name, "dir": name, "settings": {"auth": auth, "key_type": "ecdsa-p256"}})
    (sweep / "sweep.json").write_text(json.dumps({"cells": cells}))
    out = tmp_path / "sweep.html"
    r = fleetsim("report", sweep, "--html", out)
    assert r.returncode == 0, r.stderr
    page = out.read_text()
    assert_self_contained(page)
    assert len(images(page)) == 1 and "grouped by auth" in page and "grouped by key_type" not in page
    bare = fleetsim("report", sweep)
    assert bare.returncode == 2 and "is a sweep" in bare.stderr


def _bad_inputs(runs: tuple[Path, Path], tmp: Path) -> list[tuple[list[Any], str]]:
    broken = tmp / "broken"
    shutil.copytree(runs[1], broken)
    (broken / "attempts.parquet").unlink()
    (tmp / "not-a-run").mkdir()
    return [
        (["compare", runs[0]], "compare needs two or more runs, got 1"),
        (["compare", runs[0], broken], "no attempts.parquet in"),
        (["compare", runs[0], tmp / "not-a-run"], "is not a results directory"),
        (["report", tmp / "nowhere", "--html", tmp / "x.html"], "no results directory"),
        (["report", runs[0], "--html", tmp / "no-dir" / "x.html"], "cannot write"),
        (["report", runs[0], "--html", tmp], "is a directory"),
        (["compare", *runs, "--html", tmp / "no-dir" / "x.html"], "cannot write"),
    ]


def test_bad_input_is_one_line_and_a_non_zero_exit(runs: tuple[Path, Path], tmp_path: Path) -> None:
    for args, says in _bad_inputs(runs, tmp_path):
        r = fleetsim(*args)
        assert r.returncode == 2, (args, r.stderr)
        assert r.stderr.startswith("error: ") and says in r.stderr, (args, r.stderr)
        assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


# -- in a real browser -----------------------------------------------------------------------------------------
def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"  # a fresh profile each start
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                           "--disable-background-networking", "--disable-component-update", "--disable-sync",
                           f"--user-data-dir={profile}", *args], capture_output=True, text=True, timeout=120)


def screenshot_facts(png: Path) -> dict[str, float]:
    """How a screenshot looks, in numbers: distinct colours, the share of non-white pixels, pixels of the
    first run's plot colour (#1f77b4, used nowhere else on the page) and the 500-px bands that hold them."""
    from matplotlib.image import imread

    px = (imread(png)[..., :3] * 255).round().astype(np.int64)
    flat = px.reshape(-1, 3)
    packed = flat[:, 0] << 16 | flat[:, 1] << 8 | flat[:, 2]
    blue = (np.abs(px - np.array([31, 119, 180])).max(axis=2) <= 24)
    rows = np.nonzero(blue.any(axis=1))[0]
    return {"colours": int(np.unique(packed).size), "non_white": float((flat.min(axis=1) < 240).mean()),
            "plot_pixels": int(blue.sum()), "plot_bands": int(np.unique(rows // 500).size)}


def looks_like_plots(facts: dict[str, float]) -> bool:
    return (facts["colours"] > 500 and 0.03 < facts["non_white"] < 0.9 and facts["plot_pixels"] > 3000
            and facts["plot_bands"] >= 3)


def test_the_screenshot_check_tells_a_blank_page_from_one_with_plots(tmp_path: Path) -> None:
    from matplotlib.image import imsave

    imsave(tmp_path / "blank.png", np.ones((3000, 1200, 3)))
    assert not looks_like_plots(screenshot_facts(tmp_path / "blank.png"))
    text_only = np.ones((3000, 1200, 3))
    text_only[::7, ::3] = 0.1  # dark specks everywhere, like text, but none of the plots' colour
    imsave(tmp_path / "text.png", text_only)
    assert not looks_like_plots(screenshot_facts(tmp_path / "text.png"))


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (scripts/install-system-deps.sh installs it)")
def test_the_page_renders_in_headless_chromium(runs: tuple[Path, Path], tmp_path: Path) -> None:
    page = tmp_path / "run.html"
    html_page.write(page, html_page.page_for(runs[0]))
    shot = tmp_path / "run.png"
    r = chromium(tmp_path, f"--screenshot={shot}", "--window-size=1200,3000", page.as_uri())
    assert shot.is_file(), r.stderr[-2000:]
    facts = screenshot_facts(shot)
    assert looks_like_plots(facts), facts
    # every embedded figure decoded in the browser: a probe copy of the page counts them once it has loaded
    probe = tmp_path / "probe.html"
    probe.write_text(page.read_text().replace("</body>", "<script>window.addEventListener('load', () => "
                     "document.body.dataset.loaded = [...document.images].filter(i => i.complete && "
                     "i.naturalWidth > 1000).length + '/' + document.images.length)</script></body>"))
    dom = chromium(tmp_path, "--dump-dom", probe.as_uri())
    assert 'data-loaded="4/4"' in dom.stdout, dom.stdout[:500] + dom.stderr[-1000:]
