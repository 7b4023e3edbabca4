"""Both notebooks execute top to bottom (nbclient, a real kernel), on a small fleet, with only the public API.

The parameters cell is replaced, as papermill would, so the run stays small and its files land in tmp_path."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pytest

pytestmark = pytest.mark.integration  # a Jupyter kernel running fleets

if TYPE_CHECKING:
    from nbformat.notebooknode import NotebookNode

nbformat = pytest.importorskip("nbformat", reason="pip install -e '.[test]' brings nbclient and nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOKS = Path(__file__).parent.parent / "notebooks"
SCENARIOS = Path(__file__).parent.parent / "scenarios"
TINY_SWEEP = """
name = "nb-sweep"
[fleet]
model = "thermometer"
[measure]
burst_devices = 16
steady_devices = 8
steady_rate = 10
steady_duration = 2
[matrix]
mode = "one-at-a-time"
auth = ["mtls", "tls"]
key_type = ["ecdsa-p256", "rsa-2048"]
"""


def execute(name: str, parameters: str, where: Path) -> NotebookNode:
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    first = next(c for c in nb.cells if c.cell_type == "code")
    first.source = parameters
    nbclient.NotebookClient(nb, timeout=240, kernel_name="python3", resources={"metadata": {"path": str(where)}}
                            ).execute()
    return nb


def outputs(nb: NotebookNode) -> str:
    return "\n".join(str(o.get("data", {}).get("text/markdown", "")) + str(o.get("text", ""))
                     for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))


def images(nb: NotebookNode) -> int:
    return sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code"
               for o in c.get("outputs", []))


@pytest.mark.timeout(400)
def test_auth_overhead_notebook_runs_a_small_sweep_and_reads_it(tmp_path: Path) -> None:
    (tmp_path / "sweep.toml").write_text(TINY_SWEEP)
    nb = execute("auth_overhead.ipynb", f'SWEEP = "{tmp_path / "sweep.toml"}"\nOUT = "results"', tmp_path)
    text = outputs(nb)
    assert images(nb) >= 3 and "per connect for" in text and "Cross-check" in text
    assert (tmp_path / "results" / "nb-sweep" / "sweep.json").is_file()


@pytest.mark.timeout(400)
def test_revocation_notebook_reads_a_drill(tmp_path: Path) -> None:
    params = (f'SCENARIO = "{SCENARIOS / "rehearsal.toml"}"\nRUN = None\nDEVICES = 40\nOUT = "results"\n'
              'PKI = "pki"')
    nb = execute("revocation.ipynb", params, tmp_path)
    text = outputs(nb)
    assert images(nb) >= 1 and "10 devices revoked" in text and "False accepts: 0" in text and "QoS 1 messages" in text


def test_notebooks_are_committed_without_outputs() -> None:
    for path in NOTEBOOKS.glob("*.ipynb"):
        nb = nbformat.read(path, as_version=4)
        assert all(not c.get("outputs") and not c.get("execution_count") for c in nb.cells if c.cell_type == "code"), path
