"""The README's path as a new user walks it: after its two set-up commands, every command of its ``sh`` blocks and
every ``python`` block, in the README's order, in a copy of the checkout (the suite's venv linked in as
``.venv``, as `make demo` leaves it). The README is read at test time, so the walk follows its edits.

A shell starts without the venv on its PATH, as a new user's does; a line that changes the shell (``.``,
``source``, ``cd``, ``export``) holds for the lines after it, so a command needing an activation the README
forgot fails here. Python blocks run in one namespace, as in one interpreter session. What the walk leaves
out and what it scales down is declared below, each with why; an entry the README no longer matches fails
the test, so the tables stay true. Blocks of other languages (the CLI synopsis) are reference, not commands.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
COPIED = ("README.md", "Makefile", "pyproject.toml", "scenarios", "notebooks", "brokers", "dashboards")
SMALL = "--devices 16 --duration {}"
STATE = re.compile(r"^(\.|source|cd|export)\s")

# command lines the walk does not run: pattern -> why
SKIP = {
    r"^make test\b": "the second set-up command: it runs this suite, this test included",
    r"^pip install\b": "would reach a package index; the suite's venv ([test]) holds what [notebooks] brings the "
                       "notebooks here (pandas, matplotlib, nbclient's jupyter execute, ipykernel)",
    r"^jupyter execute\b": "the shipped sweep and rehearsal take minutes; tests/test_notebooks.py executes both "
                           "notebooks as shipped, scaled down through their parameters",
    r"^fleetsim sweep\b": "minutes (small) to ~20 (full), with no option to scale it; tests/test_sweep.py runs a "
                          "sweep and tests/test_notebooks.py the shipped small one, scaled",
    r"^prometheus\b": "not installed here, and it serves until stopped",
    r"\bmy\.toml\b": "a placeholder: a scenario of your own against a broker of your own at 127.0.0.1:8883",
}


def _newest(n: int) -> Callable[[re.Match[str]], str]:
    def newest(_: re.Match[str]) -> str:
        runs = sorted(p for p in Path("results").iterdir() if (p / "summary.json").is_file())
        return " ".join(f"results/{p.name}" for p in runs[-n:])
    return newest


def _scaled(m: re.Match[str]) -> str:
    return f"{m[0]} {SMALL.format(9 if m[1] == 'rehearse' else 2)}"


# command lines the walk changes: (pattern, replacement, why); applied in order, each where it matches
REWRITE: list[tuple[str, str | Callable[[re.Match[str]], str], str]] = [
    (r"^make demo\b.*", "DEMO", "the demo's recipe, read from the Makefile (its install step is the suite's venv), "
                                "scaled down like every run"),
    (r"^fleetsim (run|rehearse) \S+", _scaled, "16 devices for 2 s (a rehearsal 9 s: steady, revoke, re-enrol), "
                                               "not hundreds for minutes"),
    (r"--metrics-port 9464", "--metrics-port 0", "a fixed port may be taken on a shared machine; 0 picks a free one"),
    (r"results/<run>", _newest(1), "the placeholder: the newest run so far"),
    (r"results/<a> results/<b>", _newest(2), "the placeholders: the two newest runs so far"),
    (r"\[(--html \S+)\]", r"\1", "an optional argument, shown in brackets"),
]
# python the walk changes: (text, replacement, why)
PY_REWRITE = [
    ('fs.Group("pulse-oximeter", 500)], duration=30', 'fs.Group("pulse-oximeter", 16)], duration=2',
     "scaled down like every run"),
    ('fs.run("scenarios/ward.toml"', 'fs.run(fs.load_scenario("scenarios/ward.toml").with_overrides(devices=16, '
     'duration=2)', "scaled down like every run"),
    ("MetricsEndpoint(9464)", "MetricsEndpoint(0)", "a fixed port may be taken on a shared machine"),
    ('sweep = fs.run_sweep("scenarios/sweeps/small.toml")', "pass",
     "a sweep takes minutes; tests/test_notebooks.py runs this one through the API, scaled"),
]


def blocks(readme: str) -> list[tuple[str, str]]:
    """(language, text) of every fenced block, in order."""
    return [(m[1], m[2]) for m in re.finditer(r"^```(\w*)\n(.*?)^```", readme, re.S | re.M)]


def commands(text: str) -> list[str]:
    """The command lines of an sh block (continuations joined, blank and comment-only lines dropped)."""
    return [line.strip() for line in text.replace("\\\n", " ").splitlines() if line.strip()
            and not line.strip().startswith("#")]


def demo_recipe() -> str:
    """`make demo`'s command, as the Makefile gives it."""
    recipe = re.search(r"^demo:.*\n\t(.+)$", (ROOT / "Makefile").read_text(), re.M)
    assert recipe, "Makefile: no demo recipe"
    return recipe[1].replace("$(BIN)", ".venv/bin")


def without_venv(path: str) -> str:
    bin_dir = str(Path(sys.prefix) / "bin")
    return os.pathsep.join(p for p in path.split(os.pathsep) if p.rstrip("/") != bin_dir)


@pytest.mark.slow
@pytest.mark.mosquitto
@pytest.mark.timeout(600)
def test_the_readme_runs_in_its_order_after_the_set_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for part in COPIED:
        (shutil.copytree if (ROOT / part).is_dir() else shutil.copy)(ROOT / part, tmp_path / part)
    (tmp_path / ".venv").symlink_to(sys.prefix)
    monkeypatch.chdir(tmp_path)
    env = {**os.environ, "PATH": without_venv(os.environ["PATH"]), "COLUMNS": "200"}
    env.pop("VIRTUAL_ENV", None)
    used: set[str] = set()
    state: list[str] = []
    namespace: dict[str, object] = {}
    for language, text in blocks((ROOT / "README.md").read_text()):
        if language == "python":
            exec(compile(rewrite_python(text, used), "README.md", "exec"), namespace)
        elif language == "sh":
            for line in commands(text):
                run_line(line, state, env, used)
    unused = {*SKIP, *(p for p, _, _ in REWRITE), *(t for t, _, _ in PY_REWRITE)} - used
    assert not unused, f"the README no longer has these; drop them from the tables: {unused}"
    assert not (tmp_path / "notebooks" / "pki").exists() and not (tmp_path / "notebooks" / "results").exists()


def rewrite_python(text: str, used: set[str]) -> str:
    for old, new, _ in PY_REWRITE:
        if old in text:
            used.add(old)
            text = text.replace(old, new)
    return text


def run_line(line: str, state: list[str], env: dict[str, str], used: set[str]) -> None:
    skipped = [p for p in SKIP if re.search(p, line)]
    if skipped:
        used.update(skipped)
        return
    for pattern, new, _ in REWRITE:
        if re.search(pattern, line):
            used.add(pattern)
            line = re.sub(pattern, demo_recipe() + " " + SMALL.format(2) if new == "DEMO" else new, line)
    r = subprocess.run(["bash", "-c", "\n".join(["set -e", *state, line])], capture_output=True, text=True,
                       env=env, timeout=180)
    assert r.returncode == 0, f"README: `{line}` exited {r.returncode}: {(r.stderr or r.stdout)[-1500:]}"
    if STATE.match(line):
        state.append(line)
