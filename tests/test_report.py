"""The HTML report of a real run."""

from __future__ import annotations

import re

from typer.testing import CliRunner

from wildreid.cli import app


def test_report_of_a_real_run_is_self_contained(real_subset, tmp_path):
    runner = CliRunner()
    run = tmp_path / "run"
    result = runner.invoke(app, ["identify", str(real_subset), "--output", str(run / "submission.csv"),
                                 "--device", "cpu", "--no-cache"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["report", str(run), "--solution", str(real_subset / "solution.csv")])
    assert result.exit_code == 0, result.output
    page = (run / "report.html").read_text()
    assert "score (mean over species)" in page and "<td>nyala</td>" in page and "<td>lion</td>" in page
    assert len(re.findall(r"data:image/png;base64,", page)) == 4  # a curve and a histogram per species
    assert len(re.findall(r"data:image/jpeg;base64,", page)) >= 12 * 2  # queries and candidates
    assert not re.search(r"(src|href)=['\"]https?:", page)  # opens offline
    missing = runner.invoke(app, ["report", str(tmp_path)])
    assert missing.exit_code == 2 and "run.json" in missing.output
