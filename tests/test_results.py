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
