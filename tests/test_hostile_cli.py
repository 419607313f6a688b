"""Hostile input found from outside, through the command line: console markup in names and paths,
non-finite thresholds, weights files that are not weights, catalog paths of the wrong kind, and
grouping scores with nothing to judge."""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from tests.conftest import BENCH, settings_file
from wildreid.cli import app
from wildreid.grouping import grouping_scores
from wildreid.testing import write_subset

#: Every test here reads real photos of the shared benchmark.
pytestmark = pytest.mark.bench

runner = CliRunner()
#: Species names that rich reads as markup: a closing tag with nothing open (a MarkupError) and
#: a style (shown as plain "BOLD" once the tags are eaten).
CLOSING, STYLED = "[/x]", "[bold red]BOLD[/bold red]"
#: Tables as wide as their contents: a species name kept on one line, to be found whole.
WIDE = {"COLUMNS": "200"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """An AnimalCLEF folder of 26 real photos: per species 3 known identities (3 database photos
    and 1 query each; the fewest that fit a threshold per species) and 1 unknown query."""
    return write_subset(BENCH, tmp_path_factory.mktemp("tiny"), known=3, unknown=1)


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """One feature cache for the module: the same photos are described once."""
    return tmp_path_factory.mktemp("cache")


def _identify(data: Path, out: Path, cache: Path, *options: str):
    return runner.invoke(app, ["identify", str(data), "--output", str(out / "submission.csv"),
                               "--cache-dir", str(cache), "--device", "cpu", *options])


def _shown(text: str, output: str) -> bool:
    """Whether ``text`` is in ``output``, wherever a panel or the console width folded it."""
    return "".join(text.split()) in "".join(output.replace("│", "").split())


def _clean_failure(result, *named: str) -> None:
    """Refused with one clear message (exit code 2, as a usage error), no traceback."""
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    for text in named:
        assert _shown(text, result.output), result.output


@pytest.mark.hostile
def test_markup_in_species_and_identities_is_printed_as_text(tiny, cache, tmp_path):
    metadata = pd.read_csv(tiny / "metadata.csv", dtype=str, keep_default_na=False)
    solution = pd.read_csv(tiny / "solution.csv", dtype=str)
    metadata["species"] = metadata["species"].map({"nyala": CLOSING, "lion": STYLED})
    renamed = {metadata["identity"][metadata["identity"] != ""].iloc[0]: "[/y]"}
    metadata["identity"] = metadata["identity"].replace(renamed)
    solution["identity"] = solution["identity"].replace(renamed)
    data = tmp_path / "[red]data"  # a path that is markup too
    data.mkdir()
    metadata.to_csv(data / "metadata.csv", index=False)
    solution.to_csv(data / "solution.csv", index=False)

    found = _identify(data, data, cache)
    assert found.exit_code == 0, found.output
    assert "MarkupError" not in found.output
    assert f"{CLOSING}=" in found.output and f"{STYLED}=" in found.output  # the thresholds line
    assert _shown(f"wrote {data / 'submission.csv'}", found.output)

    scored = runner.invoke(app, ["evaluate", str(data / "submission.csv"),
                                 str(data / "solution.csv")], env=WIDE)
    assert scored.exit_code == 0, scored.output
    assert CLOSING in scored.output and STYLED in scored.output


@pytest.mark.hostile
def test_help_keeps_square_brackets():
    shown = runner.invoke(app, ["identify", "--help"], terminal_width=200)
    assert shown.exit_code == 0, shown.output
    text = " ".join(shown.output.split())
    assert "wildreid[ray]" in text and "wildreid[wildlife]" in text
    assert "[default: OUTPUT with .candidates.csv]" in text


@pytest.mark.hostile
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "NaN", "+Infinity"])
def test_non_finite_threshold_is_refused(tiny, cache, tmp_path, value):
    result = _identify(tiny, tmp_path, cache, "--threshold", value)
    _clean_failure(result, "--threshold")
    assert not (tmp_path / "submission.csv").exists()


class _Payload:
    """What a hostile weights file holds: an object that runs code when unpickled."""

    def __reduce__(self):
        return print, ("PAYLOAD RAN",)


def _pickled(path: Path) -> Path:
    import torch

    torch.save({"state_dict": _Payload()}, path)
    return path


@pytest.mark.hostile
@pytest.mark.parametrize("make", [
    _pickled,
    lambda path: path.write_bytes(pickle.dumps({"weights": [1, 2, 3]})) and path,  # not torch
    lambda path: path.write_bytes(b"\x00garbage" * 64) and path,
])
def test_weights_that_are_not_weights_are_one_clear_error(tiny, cache, tmp_path, make):
    weights = make(tmp_path / "[b]w.pth")
    result = _identify(tiny, tmp_path, cache, "--model", "tf_efficientnet_lite0",
                       *settings_file(tmp_path, weights=weights))
    _clean_failure(result, str(weights))
    assert "PAYLOAD RAN" not in result.output  # never unpickled
    assert len(result.output.strip().splitlines()) == 1, result.output


@pytest.mark.hostile
def test_safetensors_that_are_not_is_one_clear_error(tiny, cache, tmp_path):
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"\xff" * 100)
    result = _identify(tiny, tmp_path, cache, "--model", "tf_efficientnet_lite0",
                       *settings_file(tmp_path, weights=weights))
    _clean_failure(result, str(weights))


@pytest.mark.hostile
def test_weights_with_a_registered_name_asks_for_an_architecture(tiny, cache, tmp_path):
    weights = tmp_path / "w.pth"
    import torch

    torch.save({}, weights)
    result = _identify(tiny, tmp_path, cache, "--model", "efficientnet-lite0",
                       *settings_file(tmp_path, weights=weights))
    _clean_failure(result, "efficientnet-lite0", "timm")


@pytest.mark.hostile
def test_catalog_export_onto_a_folder_is_refused(tmp_path):
    assert runner.invoke(app, ["catalog", "init", str(tmp_path / "cat")]).exit_code == 0
    folder = tmp_path / "[i]out"
    folder.mkdir()
    result = runner.invoke(app, ["catalog", "export", str(tmp_path / "cat"), "--output",
                                 str(folder)])
    _clean_failure(result, str(folder), "folder")


@pytest.mark.hostile
@pytest.mark.parametrize("option", ["--output", "--candidates"])
def test_identify_onto_a_folder_is_refused_before_the_run(tiny, cache, tmp_path, option):
    folder = tmp_path / "[i]answers"
    folder.mkdir()
    result = runner.invoke(app, ["identify", str(tiny), "--cache-dir", str(cache), "--device",
                                 "cpu", "--output", str(tmp_path / "s.csv"), option, str(folder)])
    _clean_failure(result, str(folder), "folder")
    assert "images/s" not in result.output  # refused before describing a photo


@pytest.mark.hostile
def test_catalog_init_on_a_file_is_refused(tmp_path):
    taken = tmp_path / "[i]notes.txt"
    taken.write_text("not a catalog")
    result = runner.invoke(app, ["catalog", "init", str(taken)])
    _clean_failure(result, str(taken), "not a folder")
    assert taken.read_text() == "not a catalog"


@pytest.mark.hostile
@pytest.mark.parametrize("labels", [[0, 1, 2], [0, 0, 1]])
def test_grouping_scores_without_pairs_to_judge_are_all_undefined(labels):
    """Three unknown queries of three animals: no pair belongs together. Kept apart, nothing was
    put together either: no pair to judge, so precision, recall and F1 are all undefined (not 0,
    0 and 1). Put together wrongly: precision 0, F1 0, recall still undefined."""
    scores = grouping_scores(["a", "b", "c"], labels)
    assert math.isnan(scores["pairwise_recall"])
    if labels == [0, 1, 2]:
        assert all(math.isnan(scores[k]) for k in ("pairwise_precision", "pairwise_f1"))
    else:
        assert scores["pairwise_precision"] == 0 and scores["pairwise_f1"] == 0


@pytest.mark.hostile
def test_evaluate_shows_grouping_without_pairs_as_not_applicable(tmp_path):
    rows = [("d1", "A", "database"), ("d2", "A", "database"), ("q1", "", "query"),
            ("q2", "", "query"), ("q3", "", "query")]
    pd.DataFrame([{"image_id": i, "identity": who, "path": f"{i}.jpg", "species": "lion",
                   "split": split} for i, who, split in rows]).to_csv(tmp_path / "metadata.csv",
                                                                      index=False)
    pd.DataFrame({"image_id": ["q1", "q2", "q3"], "identity": ["X", "Y", "A"]}).to_csv(
        tmp_path / "solution.csv", index=False)
    pd.DataFrame({"image_id": ["q1", "q2", "q3"],  # two unknown animals, each proposed alone
                  "identity": ["new_individual_1", "new_individual_2", "A"]}).to_csv(
        tmp_path / "submission.csv", index=False)
    result = runner.invoke(app, ["evaluate", str(tmp_path / "submission.csv"),
                                 str(tmp_path / "solution.csv"), "--metadata",
                                 str(tmp_path / "metadata.csv")], env=WIDE)
    assert result.exit_code == 0, result.output
    line = " ".join(result.output.split())
    assert "pairwise precision n/a, recall n/a, F1 n/a" in line, result.output
    as_json = runner.invoke(app, ["evaluate", str(tmp_path / "submission.csv"),
                                  str(tmp_path / "solution.csv"), "--metadata",
                                  str(tmp_path / "metadata.csv"), "--json"])
    assert as_json.exit_code == 0, as_json.output
    strict = json.loads(as_json.output, parse_constant=lambda name: pytest.fail(f"{name} in JSON"))
    grouped = strict["new_individuals"]
    assert [grouped[f"pairwise_{k}"] for k in ("precision", "recall", "f1")] == [None] * 3


@pytest.mark.hostile
@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "Infinity"])
def test_the_python_api_refuses_a_threshold_that_is_not_finite(value):
    """``run.parse_threshold`` (what ``identify_dataset`` reads) refuses it as the CLI does."""
    from wildreid.run import parse_threshold

    with pytest.raises(ValueError, match="finite number"):
        parse_threshold(value)
