"""Loading and validating datasets."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest

from wildreid.data import DatasetError, load_dataset

from .conftest import BENCH


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
