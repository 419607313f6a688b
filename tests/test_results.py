"""The tables of figures in README.md and RESULTS.md are the result files' (no figure typed by
hand): regenerating them changes nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_tables_of_figures_match_the_result_files():
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "results_table.py"),
                          "--check"], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_the_option_reference_is_the_cli_s_own(tmp_path):
    """docs/cli.md is generated from the CLI (typer's docs), so it lists exactly its options."""
    typer = Path(sys.executable).parent / "typer"
    made = tmp_path / "cli.md"
    subprocess.run([str(typer), "wildreid.cli", "utils", "docs", "--name", "wildreid",
                    "--output", str(made)], check=True, capture_output=True)
    assert made.read_text() == (ROOT / "docs" / "cli.md").read_text(), (
        "docs/cli.md is out of date: .venv/bin/typer wildreid.cli utils docs --name wildreid "
        "--output docs/cli.md")


def test_recorded_commands_name_no_path_of_one_machine():
    """A result file records the command as typed beside the repository (``../data/...``), so the
    tables read the same from any clone; an absolute path made CI's tables differ from ours."""
    import json

    for path in sorted((ROOT / "benchmarks" / "results").glob("one-command-*.json")):
        for command in json.loads(path.read_text())["commands"]:
            absolute = [word for word in command.split() if word.startswith("/")]
            assert not absolute, f"{path.name} records machine paths {absolute}"


def test_one_door_lists_and_runs_every_benchmark():
    """``python benchmarks`` lists each script with its first docstring line; a name runs it
    (``--help`` here), an unknown one is refused with the list."""
    listed = subprocess.run([sys.executable, "benchmarks"], cwd=ROOT, capture_output=True,
                            text=True, check=True).stdout
    scripts = {path.stem.replace("_", "-") for path in (ROOT / "benchmarks").glob("*.py")
               if path.stem not in ("__main__", "common")}
    assert scripts == {
        line.split()[0] for line in listed.splitlines()[2:] if line.strip()}
    helped = subprocess.run([sys.executable, "benchmarks", "first-stage-recall", "--help"],
                            cwd=ROOT, capture_output=True, text=True)
    assert helped.returncode == 0 and "--keypoints-on" in helped.stdout
    wrong = subprocess.run([sys.executable, "benchmarks", "no-such"], cwd=ROOT,
                           capture_output=True, text=True)
    assert wrong.returncode == 2 and "one-command" in wrong.stderr


def test_every_result_file_the_documents_cite_exists():
    """A figure in a document names its result file; the file is in ``benchmarks/results``."""
    import re

    results = {path.name for path in (ROOT / "benchmarks" / "results").iterdir()}
    documents = [ROOT / "README.md", ROOT / "RESULTS.md", ROOT / "ARCHITECTURE.md",
                 ROOT / "BENCHMARKS.md",
                 *(ROOT / "docs").rglob("*.md")]
    cited = {(document.name, name) for document in documents
             for name in re.findall(r"`([\w.-]+-(?:cpu|cuda|gpu)[\w.-]*\.json)`",
                                    document.read_text())}
    assert cited, "the pattern finds the citations"
    missing = sorted((document, name) for document, name in cited if name not in results)
    assert not missing, missing
