"""The persistent catalog on real photos: import, identify, confirm, new individual, restart."""

from __future__ import annotations

import sqlite3
from concurrent.futures import ThreadPoolExecutor

import pandas as pd
import pytest
from typer.testing import CliRunner

from wildreid.catalog import Catalog, CatalogError
from wildreid.cli import app


@pytest.fixture()
def catalog(real_subset, tmp_path):
    runner = CliRunner()
    assert runner.invoke(app, ["catalog", "init", str(tmp_path / "cat")]).exit_code == 0
    result = runner.invoke(app, ["catalog", "add", str(tmp_path / "cat"), str(real_subset)])
    assert result.exit_code == 0, result.output
    return Catalog(tmp_path / "cat")


def test_identify_confirm_new_and_restart(catalog, real_subset, tmp_path):
    metadata = pd.read_csv(real_subset / "metadata.csv", dtype=str)
    solution = pd.read_csv(real_subset / "solution.csv", dtype=str)
    assert len(catalog.images()) == (metadata["split"] == "database").sum()
    query = metadata[metadata["split"] == "query"].iloc[0]
    image_id = catalog.add_photo(query["path"], None, query["species"])
    candidates = catalog.identify(image_id)
    same_species = catalog.individuals().query("species == @query.species")
    assert len(candidates) == min(5, len(same_species))  # ranked within its species
    assert candidates["score"].is_monotonic_decreasing
    truth = solution.set_index("image_id")["identity"][query["image_id"]]
    catalog.confirm(image_id, truth)
    second = metadata[metadata["split"] == "query"].iloc[-1]
    other = catalog.add_photo(second["path"], None, second["species"])
    name = catalog.new_individual(other)
    reopened = Catalog(tmp_path / "cat")  # a restart: nothing kept in memory
    images = reopened.images().set_index("image_id")
    assert images.loc[image_id, "individual"] == truth and images.loc[other, "individual"] == name
    assert reopened.decisions()["kind"].tolist() == ["confirm", "new"]
    assert name in set(reopened.individuals()["name"])
    with pytest.raises(CatalogError, match="no individual"):
        reopened.confirm(image_id, "nobody")


def test_concurrent_decisions_are_all_kept(catalog, real_subset):
    metadata = pd.read_csv(real_subset / "metadata.csv", dtype=str)
    queries = metadata[metadata["split"] == "query"]
    ids = [catalog.add_photo(p, None, s) for p, s in zip(queries["path"], queries["species"])]
    individual = catalog.individuals()["name"].iloc[0]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: Catalog(catalog.folder).confirm(i, individual), ids))
    assert len(catalog.decisions()) == len(ids)
    assert (catalog.images().set_index("image_id").loc[ids, "individual"] == individual).all()


def test_bad_photos_and_paths_outside_are_refused(catalog, tmp_path):
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    with pytest.raises(CatalogError, match=r"notes\.jpg"):
        catalog.add_photo(text, None)


    with sqlite3.connect(catalog.database) as connection:
        connection.execute("INSERT INTO images VALUES ('evil', NULL, NULL, NULL, "
                           "'photos/../../../../etc/passwd', 'now')")
    with pytest.raises(CatalogError, match="outside the catalog"):
        catalog.photo_path("evil")
    with pytest.raises(CatalogError, match="not a catalog"):
        Catalog(tmp_path)
