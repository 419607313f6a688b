"""The HTML report of a real run."""

from __future__ import annotations

import re

import pandas as pd
import pytest
from typer.testing import CliRunner

from wildreid.cli import app

from .conftest import settings_file

#: Every test here reads real photos of the shared benchmark.
pytestmark = pytest.mark.bench


@pytest.mark.slow
def test_report_of_a_real_run_is_self_contained(real_subset, tmp_path):
    runner = CliRunner()
    run = tmp_path / "run"
    result = runner.invoke(app, ["identify", str(real_subset), "--output", str(run / "submission.csv"),
                                 "--device", "cpu", *settings_file(tmp_path, cache=False)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["report", str(run), "--solution", str(real_subset / "solution.csv")])
    assert result.exit_code == 0, result.output
    page = (run / "report.html").read_text()
    assert "score (mean over species)" in page and "<td>nyala</td>" in page and "<td>lion</td>" in page
    # per species: the threshold curves, precision-recall and the score histograms
    assert len(re.findall(r"data:image/png;base64,", page)) == 6
    assert len(re.findall(r"data:image/jpeg;base64,", page)) >= 12 * 2  # queries and candidates
    assert not re.search(r"(src|href)=['\"]https?:", page)  # opens offline
    missing = runner.invoke(app, ["report", str(tmp_path)])
    assert missing.exit_code == 2 and "run.json" in missing.output
    # What a reviewer looks at first: outcomes per species, errors under their own heading, and
    # an unseen animal's right answer said as new_individual.
    assert "<th>wrongly new</th>" in page and "<th>wrongly known</th>" in page
    hardest = page.split("Hardest errors")[1].split("<h2>")[0]
    assert "class='query wrong'" in hardest or "No wrong answers" in hardest
    assert "right answer: <b>new_individual</b>" in page
    # In words a field ecologist reads; right answers shown beside the errors, in pages.
    assert "How to read these numbers" in page and "BAUS</b> (balanced accuracy" in page
    right = page.split("Right answers, beside the errors")[1]
    assert "class='query right'" in right and "<details open><summary>1–" in right


def test_report_without_species_has_its_curves(real_subset, tmp_path):
    metadata = pd.read_csv(real_subset / "metadata.csv", dtype=str).drop(columns="species")
    metadata = metadata[metadata["image_id"].isin(  # one species: ids are not shared across
        pd.read_csv(real_subset / "metadata.csv", dtype=str).query("species == 'lion'")["image_id"])]
    data = tmp_path / "data"
    data.mkdir()
    metadata.to_csv(data / "metadata.csv", index=False)
    solution = pd.read_csv(real_subset / "solution.csv", dtype=str)
    solution[solution["image_id"].isin(metadata["image_id"])].to_csv(data / "solution.csv",
                                                                      index=False)
    runner = CliRunner()
    run = tmp_path / "run"
    result = runner.invoke(app, ["identify", str(data), "--output", str(run / "submission.csv"),
                                 "--device", "cpu", *settings_file(tmp_path, cache=False)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["report", str(run)])
    assert result.exit_code == 0, result.output
    page = (run / "report.html").read_text()
    assert len(re.findall(r"data:image/png;base64,", page)) == 3  # one pool: its three plots
    assert "<td>all</td>" in page
