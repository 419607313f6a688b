"""The command line end to end on real photos, and its error messages."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from wildreid.cli import app
from wildreid.data import NEW_INDIVIDUAL
from wildreid.testing import damage

from .conftest import settings_file

runner = CliRunner()


@pytest.mark.slow
def test_identify_then_evaluate(real_subset, tmp_path):
    submission = tmp_path / "out" / "submission.csv"
    result = runner.invoke(app, ["identify", str(real_subset), "--output", str(submission),
                                 "--cache-dir", str(tmp_path / "cache"), "--device", "cpu",
                                 *settings_file(tmp_path, top_k=3)])
    assert result.exit_code == 0, result.output
    answers = pd.read_csv(submission, dtype=str)
    metadata = pd.read_csv(real_subset / "metadata.csv", dtype=str)
    queries = metadata[metadata["split"] == "query"]
    assert list(answers.columns) == ["image_id", "identity"]
    assert set(answers["image_id"]) == set(queries["image_id"])
    database = metadata[metadata["split"] == "database"]
    allowed = set(database["identity"]) | {NEW_INDIVIDUAL}
    assert set(answers["identity"]) <= allowed
    candidates = pd.read_csv(tmp_path / "out" / "submission.candidates.csv", dtype={"image_id": str})
    assert (candidates.groupby("image_id")["rank"].max() == 3).all()
    # candidates never cross species
    species = metadata.set_index("image_id")["species"]
    id_species = database.set_index("identity")["species"].to_dict()
    assert (candidates["identity"].map(id_species) == candidates["image_id"].map(species)).all()
    # Each candidate names the database photo of its identity whose pair gave the score.
    owner = database.set_index("image_id")["identity"]
    assert (candidates["image"].astype(str).map(owner) == candidates["identity"]).all()

    # A damaged cache: named in one warning line, recomputed, the same answers.
    (features_cache,) = [p for p in (tmp_path / "cache").glob("*/arrays.sqlite")
                         if not p.parent.name.startswith(("regions", "local"))]
    damage(features_cache.parent, "swapped-rows")
    again = runner.invoke(app, ["identify", str(real_subset), "--output", str(tmp_path / "b.csv"),
                                "--cache-dir", str(tmp_path / "cache"), "--device", "cpu"])
    assert again.exit_code == 0, again.output
    assert "warning:" in again.output and "dropped" in again.output
    assert "Traceback" not in again.output and "CacheDamaged" not in again.output
    assert pd.read_csv(tmp_path / "b.csv", dtype=str).equals(answers)

    scored = runner.invoke(app, ["evaluate", str(submission), str(real_subset / "solution.csv"),
                                 "--metadata", str(real_subset / "metadata.csv"), "--json",
                                 "--candidates", str(tmp_path / "out" / "submission.candidates.csv")])
    assert scored.exit_code == 0, scored.output
    scores = json.loads(scored.output)
    assert set(scores["species"]) == {"nyala", "lion"}
    assert 0 <= scores["score"] <= 1 and scores["queries"] == 12
    assert scores["closed_set_top5"] >= scores["closed_set_top1"]


def test_wrong_extension_query_of_a_database_photo_is_named(real_subset, tmp_path):
    """A database photo re-sent as a query (PNG name, JPEG bytes) must come back as itself."""
    metadata = pd.read_csv(real_subset / "metadata.csv", dtype=str, keep_default_na=False)
    source = metadata[(metadata["split"] == "database") & (metadata["species"] == "nyala")].iloc[0]
    copy = tmp_path / "resent.png"
    copy.write_bytes(Path(source["path"]).read_bytes())
    extra = source.copy()
    extra["image_id"], extra["path"], extra["split"], extra["identity"] = (
        "resent", str(copy), "query", "")
    pd.concat([metadata, extra.to_frame().T]).to_csv(tmp_path / "metadata.csv", index=False)
    submission = tmp_path / "s.csv"
    result = runner.invoke(app, ["identify", str(tmp_path), "--output", str(submission),
                                 *settings_file(tmp_path, cache=False), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    answers = pd.read_csv(submission, dtype=str).set_index("image_id")["identity"]
    assert answers["resent"] == source["identity"]


def test_bad_dataset_is_one_clear_message(tmp_path):
    (tmp_path / "metadata.csv").write_text("image_id,identity,path,split\n"
                                           "a,x,[/red]missing.jpg,train\n")
    result = runner.invoke(app, ["identify", str(tmp_path), *settings_file(tmp_path, cache=False)])
    assert result.exit_code == 2  # the name is text, not console markup
    assert "[/red]missing.jpg" in result.output and "unknown split value(s) train" in result.output
    assert "Traceback" not in result.output


def test_bad_threshold_option(real_subset):
    result = runner.invoke(app, ["identify", str(real_subset), "--threshold", "high"])
    assert result.exit_code == 2 and "auto" in result.output


@pytest.mark.slow
def test_demo_runs_and_scores(tmp_path):
    options = ["--individuals", "4", "--unknown", "2", "--database-images", "3", "--device",
               "cpu", "--cache-dir", str(tmp_path / "cache")]
    result = runner.invoke(app, ["demo", "--out", str(tmp_path / "demo"), *options])
    assert result.exit_code == 0, result.output
    assert "score (mean over species)" in result.output
    assert (tmp_path / "demo" / "submission.csv").is_file()
    (features,) = (tmp_path / "cache").glob("*/arrays.sqlite")
    import gc

    gc.collect()  # the first run's cache connections closed (their last checkpoint written)
    stored = features.stat().st_mtime_ns
    again = runner.invoke(app, ["demo", *options])  # same seed, same photos: all from the cache
    assert again.exit_code == 0, again.output
    assert features.stat().st_mtime_ns == stored  # nothing written: nothing computed
    assert again.output.split("score (mean over species)")[1] == result.output.split(
        "score (mean over species)")[1]


def test_help_is_quick_and_whole(tmp_path):
    """--help answers without importing torch, and is not cut at 80 columns through a pipe."""
    import subprocess
    import sys

    code = ("import sys; from wildreid.cli import app; "
            "app(['identify', '--help'], standalone_mode=False); "
            "assert 'torch' not in sys.modules, 'torch imported for --help'")
    import tempfile

    # Its own short folder: a parallel worker's tmp_path is longer than the help's column.
    folder = tempfile.mkdtemp(prefix="wildreid-help-")
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           timeout=60, env={**os.environ, "WILDREID_CACHE": folder})
    os.rmdir(folder)
    assert shown.returncode == 0, shown.stderr
    assert "--settings" in shown.stdout
    assert folder in shown.stdout  # the default cache folder shown whole


@pytest.mark.slow
def test_folder_layout_end_to_end_without_metadata(real_subset, tmp_path):
    """A user with only folders: database/<species>/<identity>/, query/, and the answers as query
    photos sorted into <identity>/ folders. identify, evaluate and report need no metadata.csv."""
    import shutil

    metadata = pd.read_csv(real_subset / "metadata.csv", dtype=str)
    truth = pd.read_csv(real_subset / "solution.csv", dtype=str).set_index("image_id")["identity"]
    data, answers = tmp_path / "my-data", tmp_path / "answers"
    for row in metadata.itertuples():
        if row.split == "database":
            target = data / "database" / row.species / row.identity / f"{row.image_id}.jpg"
        else:
            target = data / "query" / f"{row.image_id}.jpg"
            sorted_copy = answers / truth[row.image_id] / f"copy-{row.image_id}.jpg"
            sorted_copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(row.path, sorted_copy)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(row.path, target)
    run = tmp_path / "run"
    result = runner.invoke(app, ["identify", str(data), "--output", str(run / "submission.csv"),
                                 "--cache-dir", str(tmp_path / "cache"), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    ids = pd.read_csv(run / "submission.csv", dtype=str)["image_id"]
    assert ids.str.startswith("query/").all()  # folder-layout ids: query/<file name stem>
    scored = runner.invoke(app, ["evaluate", str(run / "submission.csv"), str(answers), "--json"])
    assert scored.exit_code == 0, scored.output
    scores = json.loads(scored.output)
    assert scores["queries"] == len(truth) == 12
    # query/ holds no species: the router gave each one, and queries are scored in it.
    assert set(scores["species"]) == {"nyala", "lion"}
    assert scores["species_router"]["routed_queries"] == 12
    assert scores["species_router"]["accuracy"] == 1  # checked on the known queries
    assert scores["closed_set_top1"] is not None  # the run's candidates were found too
    reported = runner.invoke(app, ["report", str(run), "--solution", str(answers)])
    assert reported.exit_code == 0, reported.output
    assert "score (mean over species)" in (run / "report.html").read_text()
    stray = answers / "nobody.jpg"
    shutil.copyfile(metadata["path"].iloc[0], stray)
    refused = runner.invoke(app, ["evaluate", str(run / "submission.csv"), str(answers)])
    assert refused.exit_code == 2 and "not inside an identity folder" in refused.output
