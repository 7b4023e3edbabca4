"""The one Run, read back from a results directory as a notebook reads it: what the README documents keeps
working, the summary completes in Jupyter, ``run.scenario`` is the Scenario (plain tables only for an older
directory this version cannot parse), and the report's figures are there by name. Pure file reading: the
directory is written here from the frozen summary of tests/test_summary_frozen.py, no run is made."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import fleetsim as fs
from fleetsim.results import files

FROZEN = Path(__file__).parent / "data" / "summary_frozen.json"


def results_dir(tmp_path: Path, scenario_toml: str) -> Path:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    frozen = json.loads(FROZEN.read_text())
    files.write_json(run_dir / files.SUMMARY, frozen["summary"])
    files.write_table(run_dir / "series.parquet", frozen["series"])
    (run_dir / "scenario.toml").write_text(scenario_toml)
    return run_dir


def test_a_run_reads_as_the_readme_documents_and_completes_in_jupyter(tmp_path: Path) -> None:
    scenario = fs.Scenario(name="frozen", fleet=[fs.Group("pulse-oximeter", 40)], duration=10)
    run = fs.load_run(results_dir(tmp_path, scenario.to_toml()))
    s = run.summary
    assert s.phases["tls"].p99 == s.raw["phases_ms"]["tls"]["p99"] and s.phases["total"].p99_9 is not None
    assert s.fleet.connected_at_end == s["fleet"]["connected_at_end"] == 39
    assert s.messages.qos1plus.published == 200 and s.revocation.storm.tls_ms.p50 > 0
    assert {"phases", "phases_ms", "fleet", "fleet_up", "revocation", "warnings"} <= set(dir(s))
    assert {"p50", "p99", "p99_9", "n"} <= set(dir(s.phases["tls"])) and "keys" in dir(s.fleet)
    assert run.scenario == scenario.replace(source=run.scenario.source)  # type: ignore[union-attr]
    assert [v["rule"] for v in run.breached] == ["connected<100%", "lost>1%", "drops>3"]
    assert list(run.figures()) == ["timeline", "phases", "failures", "machine", "rehearsal"]  # drawn when looked up
    assert run.series.num_rows == len(run.series_arrays["second"]) == 11


def test_an_older_scenario_this_version_cannot_parse_is_read_as_plain_tables(tmp_path: Path) -> None:
    run = fs.load_run(results_dir(tmp_path, 'name = "old"\nramp_up = 5\n[[fleet]]\nmodel = "thermometer"\n'))
    assert run.scenario == {"name": "old", "ramp_up": 5, "fleet": [{"model": "thermometer"}]}
    with pytest.raises(fs.FleetsimError, match=r"no attempts\.parquet"):
        run.attempts  # noqa: B018 - one clear line for what the directory lacks
