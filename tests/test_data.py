"""Loading and validating datasets."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest

from wildreid.data import DatasetError, load_dataset

from .conftest import BENCH

#: Every test here reads real photos of the shared benchmark.
pytestmark = pytest.mark.bench


def test_real_subset_loads(real_subset):
    dataset = load_dataset(real_subset)
    assert len(dataset.metadata) == 36
    assert set(dataset.database["species"]) == {"nyala", "lion"}
    assert dataset.query["identity"].isna().all()
    assert all(path.startswith("/") for path in dataset.metadata["filepath"])


def test_benchmark_metadata_loads_with_relative_paths():
    dataset = load_dataset(BENCH)
    assert len(dataset.database) == 1261 and len(dataset.query) == 1413


def test_closedset_metadata_option():
    dataset = load_dataset(BENCH, "closedset_metadata.csv", check_files=False)
    assert len(dataset.query) == 582


def test_every_problem_is_reported_at_once(real_subset, tmp_path):
    metadata = pd.read_csv(real_subset / "metadata.csv", dtype=str)
    metadata.loc[1, "image_id"] = metadata.loc[0, "image_id"]  # duplicate
    metadata.loc[2, "split"] = "train"  # unknown split
    metadata.loc[3, "path"] = str(tmp_path / "gone.jpg")  # missing file
    (tmp_path / "broken.jpg").write_bytes(b"")
    metadata.loc[4, "path"] = str(tmp_path / "broken.jpg")  # unreadable
    extra = metadata.iloc[[5]].assign(image_id="zebra-1", species="zebra", split="query",
                                      identity="")
    metadata = pd.concat([metadata, extra])  # query species without database
    metadata.to_csv(tmp_path / "metadata.csv", index=False)
    with pytest.raises(DatasetError) as caught:
        load_dataset(tmp_path)
    message = str(caught.value)
    assert len(caught.value.problems) == 5
    assert "metadata.csv" in message
    for expected in ("duplicate image_id", "unknown split value(s) train", "gone.jpg",
                     "broken.jpg: the file is empty", "query species with no database images: zebra"):
        assert expected in message


def test_missing_columns(tmp_path):
    pd.DataFrame({"image_id": ["a"], "path": ["a.jpg"]}).to_csv(tmp_path / "m.csv", index=False)
    with pytest.raises(DatasetError, match=r"missing column.*identity, split"):
        load_dataset(tmp_path / "m.csv")


def test_folder_tree(tmp_path, real_subset):
    metadata = load_dataset(real_subset).metadata
    for row in metadata.itertuples():
        if row.split == "database":
            target = tmp_path / "database" / row.species / row.identity
        else:
            target = tmp_path / "query"
        target.mkdir(parents=True, exist_ok=True)
        shutil.copy(row.filepath, target / f"{row.image_id}.jpg")
    dataset = load_dataset(tmp_path)
    assert len(dataset.database) == 24 and len(dataset.query) == 12
    assert set(dataset.database["species"]) == {"nyala", "lion"}
    assert dataset.database["identity"].nunique() == 8


def test_a_dataset_without_database_images_is_refused(real_subset, tmp_path):
    """Only queries (and no species column to catch it): a clear problem, not a TypeError later."""
    metadata = pd.read_csv(real_subset / "metadata.csv", dtype=str)
    queries = metadata[metadata["split"] == "query"].drop(columns="species")
    queries.to_csv(tmp_path / "metadata.csv", index=False)
    with pytest.raises(DatasetError, match=r"no database images.*split 'database'") as caught:
        load_dataset(tmp_path)
    assert str(tmp_path / "metadata.csv") in str(caught.value)


def test_a_folder_tree_of_queries_only_is_refused(real_subset, tmp_path):
    (tmp_path / "query").mkdir()
    for row in load_dataset(real_subset).query.head(3).itertuples():
        shutil.copy(row.filepath, tmp_path / "query" / f"{row.image_id}.jpg")
    with pytest.raises(DatasetError) as caught:
        load_dataset(tmp_path)
    message = str(caught.value)
    assert message.startswith(str(tmp_path)) and "no database images" in message
    assert f"{tmp_path / 'database'}/<identity>/" in message


def test_column_names_in_any_letter_case(real_subset, tmp_path):
    metadata = pd.read_csv(real_subset / "metadata.csv", dtype=str)
    metadata.columns = [c.upper() if c == "image_id" else c.capitalize() for c in metadata.columns]
    metadata.to_csv(tmp_path / "metadata.csv", index=False)
    dataset = load_dataset(tmp_path)
    assert {"image_id", "species", "split"} <= set(dataset.metadata.columns)
    assert set(dataset.database["species"]) == {"nyala", "lion"}

    metadata["species"] = metadata["Species"]  # the same column twice, in two letter cases
    metadata.to_csv(tmp_path / "metadata.csv", index=False)
    with pytest.raises(DatasetError, match="columns Species, species are all 'species' once "
                                           "letter case is ignored; keep one"):
        load_dataset(tmp_path)
