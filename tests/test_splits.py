"""``wildreid split``: benchmarks made from labelled real photos with wildlife-datasets' splitters,
and wildlife-datasets dataset folders read by their own loaders."""

from __future__ import annotations

import json
import os

import pandas as pd
import pytest
from typer.testing import CliRunner

from tests.conftest import BENCH
from wildreid.cli import app
from wildreid.data import DatasetError, load_dataset
from wildreid.splits import split_labelled
from wildreid.testing import write_labelled

#: Every test here reads real photos of the shared benchmark.
pytestmark = pytest.mark.bench

runner = CliRunner()


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    return write_labelled(BENCH, tmp_path_factory.mktemp("labelled"))


def _split(labelled, output, *options):
    result = runner.invoke(app, ["split", str(labelled.parent), "--metadata", str(labelled),
                                 "--output", str(output), *options])
    assert result.exit_code == 0, result.output
    return (pd.read_csv(output / "metadata.csv", dtype=str),
            pd.read_csv(output / "solution.csv", dtype=str), result.output)


@pytest.mark.slow
def test_open_split_is_an_animalclef_benchmark_that_identify_and_evaluate_run_on(labelled, tmp_path):
    metadata, solution, shown = _split(labelled, tmp_path / "split", "--kind", "open",
                                       "--query-share", "0.3", "--unknown-share", "0.3")
    source = pd.read_csv(labelled, dtype=str)
    assert len(metadata) == len(source) and set(metadata["image_id"]) == set(source["image_id"])
    assert metadata.loc[metadata["split"] == "query", "identity"].isna().all()
    truth = source.set_index("image_id")["identity"]
    assert (solution.set_index("image_id")["identity"] == truth[solution["image_id"]]).all()
    for species, part in metadata.groupby("species"):
        database = set(part.loc[part["split"] == "database", "identity"])
        queries = solution[solution["image_id"].isin(part["image_id"])]
        known = queries["identity"].isin(database)
        assert known.any() and (~known).any(), species  # known and unknown individuals
        # An unknown individual is only among the queries; a known one has its database photos.
        unknown_names = set(queries.loc[~known, "identity"])
        assert not unknown_names & database
        images = len(part)
        assert 0.15 < (~known).sum() / images < 0.45  # about --unknown-share of the photos
    assert "unknown" in shown and "nyala" in shown

    # The written folder is a dataset: paths resolve to the real photos, identify runs on it.
    dataset = load_dataset(tmp_path / "split")
    assert all(os.path.isfile(p) for p in dataset.metadata["filepath"])
    run = tmp_path / "run" / "submission.csv"
    result = runner.invoke(app, ["identify", str(tmp_path / "split"), "--output", str(run),
                                 "--cache-dir", str(tmp_path / "cache"), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    scored = runner.invoke(app, ["evaluate", str(run), str(tmp_path / "split" / "solution.csv"),
                                 "--json"])
    assert scored.exit_code == 0, scored.output
    assert json.loads(scored.output)["queries"] == len(solution)

    # Never written over; the same seed gives the same split, another seed another.
    again = runner.invoke(app, ["split", str(labelled.parent), "--metadata", str(labelled),
                                "--output", str(tmp_path / "split")])
    assert again.exit_code == 2 and "already exist" in again.output
    same, _, _ = _split(labelled, tmp_path / "same", "--kind", "open")
    other, _, _ = _split(labelled, tmp_path / "other", "--kind", "open", "--seed", "5")
    assert same.equals(metadata)
    assert not other["split"].equals(metadata["split"])


def test_closed_and_disjoint_splits(labelled, tmp_path):
    metadata, solution, _ = _split(labelled, tmp_path / "closed", "--kind", "closed")
    database = set(metadata.loc[metadata["split"] == "database", "identity"])
    assert solution["identity"].isin(database).all()  # every query individual is known
    assert set(solution["identity"]) == set(pd.read_csv(labelled)["identity"])
    metadata, solution, _ = _split(labelled, tmp_path / "disjoint", "--kind", "disjoint")
    database = set(metadata.loc[metadata["split"] == "database", "identity"])
    assert not solution["identity"].isin(database).any()


def test_time_split_puts_later_days_among_queries_and_never_splits_a_day(labelled):
    images = load_dataset(labelled, labelled=True).metadata
    # Real photos, dates given: each individual seen on days 1, 2, 3 (several photos a day).
    images["date"] = [f"2024-05-{1 + rank // 2:02d}" for rank in
                      images.groupby("identity").cumcount()]
    frame, solution = split_labelled(images, "time", 0.4, 0.25, seed=1)
    known = frame[frame["identity"].isin(frame.loc[frame["split"] == "database", "identity"])]
    queried = 0
    for _, part in known.groupby("identity"):
        database_days = set(part.loc[part["split"] == "database", "date"])
        query_days = set(part.loc[part["split"] == "query", "date"])
        assert not database_days & query_days  # one day's sightings on one side
        if query_days:
            assert min(query_days) > max(database_days)  # queries are later
            queried += 1
    assert queried >= 5
    assert frame["split"].value_counts()["query"] == len(solution) > 0
    undated = images.assign(date=pd.NA)
    with pytest.raises(DatasetError, match="needs a date on every image"):
        split_labelled(undated, "time")


def test_a_wildlife_datasets_folder_is_read_by_its_own_loader(tmp_path):
    # NyalaData's layout as downloaded: .../Nyala_Data_Zero/<split>/<identity>/<file>, flank in the
    # name; the files are links to the shared benchmark's real nyala photos.
    table = pd.read_csv(BENCH / "metadata.csv", dtype=str)
    nyala = table[(table["species"] == "nyala") & (table["split"] == "database")]
    nyala = nyala[nyala["identity"].isin(nyala["identity"].unique()[:6])]
    root = tmp_path / "NyalaData"
    for row in nyala.itertuples():
        folder = root / "wildlife_reidentification-main" / "Nyala_Data_Zero" / "train" / \
            row.identity.split("_")[1]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{row.image_id}_{row.orientation}.jpg").symlink_to(BENCH / row.path)
    result = runner.invoke(app, ["split", str(root), "--wildlife-datasets", "NyalaData",
                                 "--output", str(tmp_path / "split"), "--kind", "closed"])
    assert result.exit_code == 0, result.output
    written = pd.read_csv(tmp_path / "split" / "metadata.csv", dtype=str)
    assert len(written) == len(nyala)
    assert set(written["species"]) == {"nyala"} and set(written["dataset"]) == {"NyalaData"}
    assert set(written["orientation"]) == set(nyala["orientation"])
    assert written["identity"].dropna().nunique() == 6

    wrong = runner.invoke(app, ["split", str(root), "--wildlife-datasets", "NyalaDta",
                                "--output", str(tmp_path / "x")])
    assert wrong.exit_code == 2 and "did you mean NyalaData" in wrong.output
    unsplit = runner.invoke(app, ["identify", str(root), "--wildlife-datasets", "NyalaData"])
    assert unsplit.exit_code == 2 and "wildreid split" in unsplit.output
    assert "Traceback" not in unsplit.output + wrong.output


def test_bad_split_requests_are_clear(labelled, tmp_path):
    result = runner.invoke(app, ["split", str(labelled.parent), "--metadata", str(labelled),
                                 "--output", str(tmp_path / "s"), "--kind", "random"])
    assert result.exit_code != 0 and "closed, open, disjoint, time" in result.output
    result = runner.invoke(app, ["split", str(labelled.parent), "--metadata", str(labelled),
                                 "--output", str(tmp_path / "s"), "--query-share", "1.5"])
    assert result.exit_code == 2 and "between 0 and 1" in result.output
    with_blank = pd.read_csv(labelled, dtype=str)
    with_blank.loc[3, "identity"] = ""
    with_blank.to_csv(tmp_path / "blank.csv", index=False)
    result = runner.invoke(app, ["split", str(tmp_path), "--metadata", str(tmp_path / "blank.csv"),
                                 "--output", str(tmp_path / "s")])
    assert result.exit_code == 2 and "without identity" in result.output
