"""Both notebooks execute top to bottom (nbclient, a real kernel) as shipped, with only the public API.

As shipped means their own defaults (the shipped sweep, the shipped rehearsal, the repository's pki/ and results/
as seen from notebooks/, where Jupyter runs them), from a copy of the repository's notebooks/ and scenarios/. The
run is scaled down only through each notebook's parameters: a cell injected after the one tagged "parameters",
as papermill does. A second execution then reads what the first wrote, through the parameter that loads it.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

pytestmark = pytest.mark.integration  # a Jupyter kernel running fleets

if TYPE_CHECKING:
    from nbformat.notebooknode import NotebookNode

nbformat = pytest.importorskip("nbformat", reason="pip install -e '.[test]' brings nbclient and nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = Path(__file__).parent.parent
NOTEBOOKS = ROOT / "notebooks"
# the shipped small sweep, each cell's two runs at the smallest size that still measures something
SMALL_MEASURE = '{"burst_devices": 8, "steady_devices": 4, "steady_rate": 10, "steady_duration": 1}'


def repository(tmp_path: Path) -> Path:
    """A copy of what the notebooks read: notebooks/ and scenarios/, nothing else (no pki/, no results/)."""
    for part in ("notebooks", "scenarios"):
        shutil.copytree(ROOT / part, tmp_path / part)
    return tmp_path


def execute(repo: Path, name: str, parameters: str) -> NotebookNode:
    """Run ``notebooks/<name>`` from notebooks/ (as `jupyter execute` does) with ``parameters`` injected."""
    nb = nbformat.read(repo / "notebooks" / name, as_version=4)
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{name}: one cell tagged 'parameters'"
    injected = nbformat.v4.new_code_cell(parameters, metadata={"tags": ["injected-parameters"]})
    nb.cells.insert(tagged[0] + 1, injected)
    nbclient.NotebookClient(nb, timeout=240, kernel_name="python3",
                            resources={"metadata": {"path": str(repo / "notebooks")}}).execute()
    return nb


def outputs(nb: NotebookNode) -> str:
    return "\n".join(str(o.get("data", {}).get("text/markdown", "")) + str(o.get("text", ""))
                     for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))


def images(nb: NotebookNode) -> int:
    return sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code"
               for o in c.get("outputs", []))


def left_in_notebooks(repo: Path) -> set[str]:
    """What executing left beside the notebooks (.gitignore covers /pki/ and /results/, not notebooks/*)."""
    return {p.name for p in (repo / "notebooks").iterdir()} - {p.name for p in NOTEBOOKS.iterdir()}


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_auth_overhead_notebook_runs_the_shipped_sweep(tmp_path: Path) -> None:
    """The shipped sweep has cells without TLS (auth none, password): no handshake bytes, which once sorted last
    and stopped the notebook ("cannot convert float NaN to integer")."""
    repo = repository(tmp_path)
    text = outputs(execute(repo, "auth_overhead.ipynb", f"MEASURE = {SMALL_MEASURE}"))
    assert "per connect for" in text and "The largest handshake was" in text and "Cross-check" in text
    assert (repo / "results" / "sweep-small" / "sweep.json").is_file() and not left_in_notebooks(repo)
    again = execute(repo, "auth_overhead.ipynb", 'SWEEP = "../results/sweep-small"')
    assert images(again) >= 3 and "The largest handshake was" in outputs(again)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_revocation_notebook_runs_the_shipped_rehearsal(tmp_path: Path) -> None:
    repo = repository(tmp_path)
    nb = execute(repo, "revocation.ipynb", "DEVICES = 20\nDURATION = 12")
    text = outputs(nb)
    assert images(nb) >= 1 and "5 devices revoked" in text and "False accepts: 0" in text and "QoS 1 messages" in text
    assert "5 came back" in text
    (run,) = (repo / "results").iterdir()
    assert (repo / "pki" / "inventory.json").is_file() and not left_in_notebooks(repo)
    again = outputs(execute(repo, "revocation.ipynb", f'RUN = "../results/{run.name}"'))
    assert "5 devices revoked" in again


def test_notebooks_are_committed_without_outputs() -> None:
    for path in NOTEBOOKS.glob("*.ipynb"):
        nb = nbformat.read(path, as_version=4)
        assert all(not c.get("outputs") and not c.get("execution_count") for c in nb.cells if c.cell_type == "code"), path
