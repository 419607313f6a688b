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
