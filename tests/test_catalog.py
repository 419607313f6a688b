"""The persistent catalog on real photos: import, identify, confirm, new individual, restart."""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from wildreid.catalog import Catalog, CatalogError, check_name
from wildreid.cli import app


@pytest.fixture()
def catalog(real_subset, tmp_path):
    runner = CliRunner()
    assert runner.invoke(app, ["catalog", "init", str(tmp_path / "cat")]).exit_code == 0
    result = runner.invoke(app, ["catalog", "add", str(tmp_path / "cat"), str(real_subset),
                                 "--no-rank"])
    assert result.exit_code == 0, result.output
    return Catalog(tmp_path / "cat")


@pytest.mark.slow
def test_catalog_add_ranks_the_waiting_photos_ahead_for_any_process(real_subset, tmp_path):
    """``catalog add`` ranks the photos waiting for review ahead and stores their candidates in
    the catalog: another process (the review app) answers them without fitting a model, with
    what ranking them then would give, until a decision makes them stale."""
    runner = CliRunner()
    assert runner.invoke(app, ["catalog", "init", str(tmp_path / "cat")]).exit_code == 0
    result = runner.invoke(app, ["catalog", "add", str(tmp_path / "cat"), str(real_subset)])
    assert result.exit_code == 0, result.output
    assert "ranked 12 waiting photos ahead" in result.output
    reopened = Catalog(tmp_path / "cat")  # another process: nothing in memory
    waiting = reopened.unassigned()
    stored = reopened.ranked_ahead()
    assert sorted(stored) == sorted(waiting)
    first = reopened.identify(waiting[0])
    assert reopened._identifier is None  # answered from the catalog, no model fitted
    assert first.attrs["threshold"] == stored[waiting[0]].attrs["threshold"]
    reopened._ahead = (-1, {})
    with sqlite3.connect(reopened.database) as connection:
        connection.execute("DELETE FROM ranked")
    ranked_now = reopened.identify(waiting[0])
    assert ranked_now["identity"].tolist() == first["identity"].tolist()
    np.testing.assert_allclose(ranked_now["score"], first["score"], atol=1e-6)
    assert ranked_now["image"].tolist() == first["image"].tolist()
    assert ranked_now.attrs["threshold"] == pytest.approx(first.attrs["threshold"])
    assert reopened.rank_waiting() == len(waiting)  # stored again
    # A photo arriving to wait changes no model: the others stay ranked, it alone is ranked.
    copy = reopened.add_photo(reopened.photo_path(waiting[0]), None,
                              reopened.images().set_index("image_id").loc[waiting[0], "species"])
    assert sorted(reopened.ranked_ahead()) == sorted(waiting)
    assert reopened.rank_waiting() == 1 and copy in reopened.ranked_ahead()
    reopened.confirm(waiting[0], first["identity"].iloc[0])
    assert Catalog(tmp_path / "cat").ranked_ahead() == {}  # stale after a decision


def test_identify_confirm_new_and_restart(catalog, real_subset, tmp_path):
    metadata = pd.read_csv(real_subset / "metadata.csv", dtype=str)
    solution = pd.read_csv(real_subset / "solution.csv", dtype=str)
    identified = catalog.images().dropna(subset=["individual"])
    assert len(identified) == (metadata["split"] == "database").sum()
    assert len(catalog.unassigned()) == (metadata["split"] == "query").sum()  # waiting for review
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
        connection.execute("INSERT INTO images (image_id, individual, species, orientation, "
                           "path, added) VALUES ('evil', NULL, NULL, NULL, "
                           "'photos/../../../../etc/passwd', 'now')")
    with pytest.raises(CatalogError, match="outside the catalog"):
        catalog.photo_path("evil")
    with pytest.raises(CatalogError, match="not a catalog"):
        Catalog(tmp_path)


def _digest(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_hostile_ids_never_name_a_file(real_subset, tmp_path):
    metadata = pd.read_csv(real_subset / "metadata.csv", dtype=str)
    database = metadata[metadata["split"] == "database"].head(3).copy()
    victim = tmp_path / "victim.jpg"
    shutil.copyfile(database["path"].iloc[2], victim)
    before = _digest(victim)
    database["image_id"] = ["../../victim", "/tmp/evil", "a/../../../victim"]
    database["identity"] = ["../x", "lion/7", "<b>y</b>"]
    hostile = tmp_path / "hostile"
    hostile.mkdir()
    database.to_csv(hostile / "metadata.csv", index=False)
    catalog = Catalog.create(tmp_path / "cat")
    assert catalog.add_dataset(hostile).added == 3
    assert _digest(victim) == before and not (tmp_path / "evil").exists()
    stored = list((tmp_path / "cat" / "photos").iterdir())
    assert len(stored) == 3 and all(p.suffix == ".jpg" and len(p.stem) == 32 for p in stored)
    for image_id in database["image_id"]:
        assert catalog.photo_path(image_id).parent == catalog.photos
    assert set(catalog.individuals()["name"]) == {"../x", "lion/7", "<b>y</b>"}


def test_the_documented_folder_tree_imports(real_subset, tmp_path):
    metadata = pd.read_csv(real_subset / "metadata.csv", dtype=str)
    database = metadata[metadata["split"] == "database"]
    tree = tmp_path / "tree"
    for row in database.head(6).itertuples():
        folder = tree / "database" / row.species / row.identity
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(row.path, folder / f"{row.image_id}.jpg")
    catalog = Catalog.create(tmp_path / "cat")
    imported = catalog.add_dataset(tree)
    assert imported.added == 6 and imported.skipped == []
    assert all("/" in i for i in catalog.images()["image_id"])  # ids are paths in the tree
    assert set(catalog.individuals()["name"]) == set(database.head(6)["identity"])


def test_names_are_checked_before_anything_is_added(real_subset, tmp_path):
    metadata = pd.read_csv(real_subset / "metadata.csv", dtype=str)
    database = metadata[metadata["split"] == "database"].head(4).copy()
    database["identity"] = ["ok", "fine", "x" * 300, "tab\there"]
    bad = tmp_path / "bad"
    bad.mkdir()
    database.to_csv(bad / "metadata.csv", index=False)
    catalog = Catalog.create(tmp_path / "cat")
    with pytest.raises(CatalogError, match="2 rows cannot be imported") as raised:
        catalog.add_dataset(bad)
    assert "longer than 200" in str(raised.value) and "control characters" in str(raised.value)
    assert catalog.images().empty
    image_id = catalog.add_photo(database["path"].iloc[0], None)
    for name in ("", "   ", "new_individual"):
        with pytest.raises(CatalogError):
            catalog.new_individual(image_id, name)


def test_readding_reports_skipped_ids_and_never_overwrites(catalog, real_subset, tmp_path):
    again = catalog.add_dataset(real_subset)
    assert again.added == 0 and len(again.skipped) == len(catalog.images())
    result = CliRunner().invoke(app, ["catalog", "add", str(catalog.folder), str(real_subset)])
    assert result.exit_code == 0 and f"skipped {len(again.skipped)} photos" in result.output
    existing = catalog.images().iloc[0]
    stored = catalog.photo_path(existing["image_id"])
    before = _digest(stored)
    other = catalog.images().iloc[-1]
    with pytest.raises(CatalogError, match="already in the catalog"):
        catalog.add_photo(catalog.photo_path(other["image_id"]), None,
                          image_id=existing["image_id"])
    assert _digest(stored) == before and len(list(catalog.photos.iterdir())) == len(
        catalog.images())


def test_an_identical_photo_keeps_its_individual_among_the_candidates(catalog):
    known = catalog.images().dropna(subset=["individual"]).iloc[0]
    copy = catalog.add_photo(catalog.photo_path(known["image_id"]), None, known["species"])
    candidates = catalog.identify(copy)
    assert candidates["identity"].iloc[0] == known["individual"]
    assert candidates["score"].iloc[0] == pytest.approx(1.0, abs=1e-4)
    itself = catalog.identify(known["image_id"])  # an identified photo: ranked without itself
    assert len(itself) and itself["score"].iloc[0] < 0.9999


def test_a_change_from_another_process_refits_and_names_are_normalised(catalog, real_subset):
    first = catalog.identifier()
    assert catalog.identifier() is first  # unchanged catalog: the fitted model is kept
    metadata = pd.read_csv(real_subset / "metadata.csv", dtype=str)
    query = metadata[metadata["split"] == "query"].iloc[0]
    other = Catalog(catalog.folder)  # e.g. 'wildreid catalog add' in another process
    image_id = other.add_photo(query["path"], None, query["species"])
    other.new_individual(image_id, "Zoe\u0308")  # decomposed
    copy = other.add_photo(query["path"], None, query["species"])
    # The other process's decision is known here (the model grown or fitted again), by the name
    # in its composed form.
    assert catalog.identify(copy)["identity"].iloc[0] == "Zo\u00eb"
    with pytest.raises(CatalogError, match="already exists"):
        other.new_individual(copy, "Zo\u00eb")
    with pytest.raises(CatalogError, match="unseen animal"):
        check_name("\uff4e\uff45\uff57_individual")  # full-width letters


def test_export_is_a_dataset_identify_reads(catalog, tmp_path):
    from wildreid.cli import app as cli

    result = CliRunner().invoke(cli, ["catalog", "export", str(catalog.folder), "--output",
                                      str(tmp_path / "out" / "metadata.csv")])
    assert result.exit_code == 0, result.output
    from wildreid.data import load_dataset

    dataset = load_dataset(tmp_path / "out")
    assert len(dataset.database) == catalog.images()["individual"].notna().sum()
    assert len(dataset.query) == len(catalog.unassigned())


@pytest.mark.slow
def test_a_decision_grows_the_model_instead_of_fitting_it_again(catalog):
    first = catalog.identifier()
    waiting = catalog.unassigned()
    individual = catalog.individuals()["name"].iloc[0]
    catalog.confirm(waiting[0], individual)
    grown = catalog.identifier()
    assert grown is first  # grown in place: only the confirmed photo was described
    copy = catalog.add_photo(catalog.photo_path(waiting[0]), None,
                             catalog.images().set_index("image_id").loc[waiting[0], "species"])
    ranked = catalog.identify(copy)
    assert ranked["identity"].iloc[0] == individual and ranked["score"].iloc[0] > 0.9999
    catalog._identifier = None  # the same catalog fitted from scratch ranks the same
    fitted = catalog.identify(copy)
    assert fitted["identity"].tolist() == ranked["identity"].tolist()
    np.testing.assert_allclose(fitted["score"], ranked["score"], atol=1e-6)
    refit = catalog.identifier()
    catalog.undo()  # anything but an addition: fitted again
    assert catalog.identifier() is not refit


@pytest.mark.hostile
def test_an_individual_s_timeline_with_locations_and_notes(catalog, real_subset):
    """An individual's page lists each photo's sighting (id, own date or none, source file name,
    location, notes), dated photos oldest first; first and last come only from photos' dates;
    notes are checked text, and every edit is logged."""
    name = catalog.individuals()["name"].iloc[0]
    page = catalog.individual(name)
    assert [s["image_id"] for s in page["sightings"]] == page["photos"]
    dated = [s["date"] for s in page["sightings"] if s["date"]]
    assert dated == sorted(dated) and page["dated"] == len(dated)
    assert page["first"] == (dated[0] if dated else None)  # never the day of import
    assert all(s["source"] for s in page["sightings"])  # the file name each came with
    photo = page["photos"][0]
    said = catalog.describe_photo(photo, location="Kruger, <b>gate 3</b>", notes="scar\nleft ear")
    assert said["location"] == "Kruger, <b>gate 3</b>"  # stored as text; shown as text
    catalog.describe_photo(photo, notes="")  # clears the notes, keeps the location
    again = {s["image_id"]: s for s in catalog.individual(name)["sightings"]}[photo]
    assert again["location"] == "Kruger, <b>gate 3</b>" and again["notes"] is None
    assert catalog.decisions()["kind"].tolist()[-2:] == ["describe", "describe"]
    for bad, why in (("x" * 2001, "longer than"), ("a\x00b", "control characters")):
        with pytest.raises(CatalogError, match=why):
            catalog.describe_photo(photo, notes=bad)
    with pytest.raises(CatalogError, match="no image"):
        catalog.describe_photo("../../etc/passwd", notes="x")
    # An upload keeps the client's file name as text (printable characters only).
    upload = catalog.add_photo(catalog.photo_path(photo), None, source_name="cam\x07 1/IMG.jpg",
                               duplicate=True)
    row = catalog.images().set_index("image_id").loc[upload]
    assert row["source"] == "cam 1/IMG.jpg" and catalog.photo_path(upload).is_file()
