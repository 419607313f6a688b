"""Hostile input found from outside, on catalogs of real photos: spreadsheet formulas in
exported names and ids, lookalike individual names, and the same photos imported twice under
two dataset layouts."""

from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path

import pandas as pd
import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from wildreid.app import create_app
from wildreid.catalog import Catalog, CatalogError
from wildreid.cli import app as cli

LOCAL = "http://127.0.0.1"
#: What a spreadsheet reads as the start of a formula (OWASP, CSV injection).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
FORMULAS = ["=cmd|' /C calc'!A0", "+SUM(1+1)", "-1+2", "@foo"]


def _database(real_subset: Path) -> pd.DataFrame:
    metadata = pd.read_csv(real_subset / "metadata.csv", dtype=str)
    return metadata[metadata["split"] == "database"]


def _cells(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text, newline="")))


@pytest.mark.hostile
def test_exported_cells_never_start_a_formula(real_subset, tmp_path):
    rows = _database(real_subset).head(len(FORMULAS)).copy()
    rows["image_id"] = FORMULAS
    rows["identity"] = FORMULAS[::-1]
    # Orientation and date are not names: nothing but the import's strip checks them.
    rows["orientation"] = ["\t=1+1", "\r+1", "left", "right"]
    rows["date"] = ["-2+3", "2024-05-01", "@now", "2024-05-03"]
    hostile = tmp_path / "hostile"
    hostile.mkdir()
    # Text quoted: a bare carriage return would end the row.
    rows.to_csv(hostile / "metadata.csv", index=False, quoting=csv.QUOTE_NONNUMERIC)
    folder = tmp_path / "=cat"  # the catalog's folder name is exported too (dataset, paths)
    catalog = Catalog.create(folder)
    assert catalog.add_dataset(hostile).added == len(FORMULAS)

    result = CliRunner().invoke(cli, ["catalog", "export", str(folder), "--output",
                                      str(tmp_path / "metadata.csv")])
    assert result.exit_code == 0, result.output
    by_cli = (tmp_path / "metadata.csv").read_text(encoding="utf-8")
    by_app = TestClient(create_app(folder), base_url=LOCAL).get("/api/export").text
    for text in (by_cli, by_app):
        header, *body = _cells(text)
        assert len(body) == len(FORMULAS)
        for row in body:
            for name, cell in zip(header, row):
                assert not cell.startswith(FORMULA_STARTS), (name, cell)
        table = pd.DataFrame(body, columns=header)
        assert sorted(table["image_id"]) == sorted(f"'{value}" for value in FORMULAS)
        assert sorted(table["identity"]) == sorted(f"'{value}" for value in FORMULAS)
        assert set(table["dataset"]) == {"'=cat"}
        assert {"'=1+1", "'+1", "left"} <= set(table["orientation"])  # stripped, then led by '
        assert {"'-2+3", "'@now", "2024-05-01"} <= set(table["date"])
    # The paths stay paths (made to start with ./, not quoted): the export is still a dataset.
    exported = pd.read_csv(tmp_path / "metadata.csv", dtype=str)
    assert all((tmp_path / path).is_file() for path in exported["path"])


@pytest.mark.hostile
def test_only_text_cells_are_neutralised_not_numbers():
    from wildreid.catalog import csv_safe

    table = pd.DataFrame({"name": ["-1", "=x", "ok", None, "\tx", "\r@x", "a=b"],
                          "score": [-1.5, 2.0, -0.25, 1.0, 0.0, -1e9, 3.0],
                          "count": [-3, 1, 2, 4, 5, 6, -7]})
    safe = csv_safe(table)
    assert safe["name"].tolist()[:3] == ["'-1", "'=x", "ok"] and pd.isna(safe["name"].iloc[3])
    assert safe["name"].tolist()[4:] == ["'\tx", "'\r@x", "a=b"]
    assert safe["score"].tolist() == table["score"].tolist()
    assert safe["count"].tolist() == table["count"].tolist()
    assert table["name"].iloc[1] == "=x"  # the table given is left as it was


@pytest.fixture()
def chimps(real_subset, tmp_path) -> tuple[Catalog, list[str]]:
    """A catalog holding ``chimp_Sagu`` (species chimp) and the paths of other real photos."""
    paths = _database(real_subset)["path"].tolist()
    catalog = Catalog.create(tmp_path / "cat")
    catalog.add_photo(paths[0], "chimp_Sagu", "chimp")
    return catalog, paths[1:]


@pytest.mark.hostile
@pytest.mark.parametrize("lookalike", ["chimp_\u0405agu",  # Cyrillic capital dze
                                       "chimp_S\u0430gu",  # Cyrillic small a
                                       "chimp_\uff33agu",  # full-width S
                                       "CHIMP_SAGU", "chimp_\u0405\u0430gu"])
def test_a_name_that_looks_like_an_existing_one_is_refused(chimps, lookalike):
    catalog, paths = chimps
    waiting = catalog.add_photo(paths[0], None, "chimp")
    with pytest.raises(CatalogError, match="looks like") as refused:
        catalog.new_individual(waiting, lookalike)
    assert lookalike in str(refused.value) and "'chimp_Sagu'" in str(refused.value)
    with pytest.raises(CatalogError, match="looks like"):
        catalog.add_photo(paths[1], lookalike, "chimp")
    other = catalog.add_photo(paths[2], None, "chimp")
    with pytest.raises(CatalogError, match="looks like"):
        catalog.new_group([waiting, other], lookalike)
    assert set(catalog.individuals()["name"]) == {"chimp_Sagu"}
    assert catalog.unassigned() == [waiting, other]
    # A name that differs visibly is a name; the same lookalike in another species is allowed.
    assert catalog.new_individual(waiting, "chimp_Sagi") == "chimp_Sagi"
    gorilla = catalog.add_photo(paths[3], None, "gorilla")
    assert catalog.new_individual(gorilla, lookalike) == lookalike


@pytest.mark.hostile
def test_confirming_to_a_lookalike_name_names_the_real_one(chimps):
    catalog, paths = chimps
    waiting = catalog.add_photo(paths[0], None, "chimp")
    with pytest.raises(CatalogError, match=r"no individual 'chimp_\u0405agu'.*'chimp_Sagu'"):
        catalog.confirm(waiting, "chimp_\u0405agu")


@pytest.mark.hostile
def test_an_import_with_lookalike_names_adds_nothing(chimps, real_subset, tmp_path):
    catalog, _ = chimps
    rows = _database(real_subset).head(3).copy()
    rows["species"] = "chimp"
    rows["identity"] = ["chimp_\u0405agu", "chimp_Kibale", "chimp_Kiba1e"]
    folder = tmp_path / "lookalikes"
    folder.mkdir()
    rows.to_csv(folder / "metadata.csv", index=False)
    with pytest.raises(CatalogError, match="2 rows cannot be imported") as refused:
        catalog.add_dataset(folder)
    assert "'chimp_Sagu'" in str(refused.value) and "'chimp_Kibale'" in str(refused.value)
    assert len(catalog.images()) == 1


@pytest.mark.hostile
def test_the_app_refuses_a_lookalike_name_readably(chimps):
    catalog, paths = chimps
    waiting = [catalog.add_photo(path, None, "chimp") for path in paths[:2]]
    http = TestClient(create_app(catalog.folder), base_url=LOCAL)
    refused = http.post("/api/new", data={"image_id": waiting[0], "name": "chimp_\u0405agu"})
    assert refused.status_code == 400
    detail = refused.json()["detail"]
    assert "chimp_\u0405agu" in detail and "'chimp_Sagu'" in detail and "looks like" in detail
    assert "CYRILLIC CAPITAL LETTER DZE" in detail  # says which character is the odd one
    grouped = http.post("/api/new-group", data={"image_id": waiting, "name": "chimp_\u0405agu"})
    assert grouped.status_code == 400 and "looks like" in grouped.json()["detail"]
    assert http.post("/api/confirm", data={"image_id": waiting[0],
                                           "individual": "chimp_\u0405agu"}).status_code == 400
    assert catalog.unassigned() == waiting and catalog.decisions().empty


def _as_folder_tree(real_subset: Path, tree: Path) -> None:
    """The photos of ``real_subset`` copied into the folder-tree layout:
    ``database/<species>/<identity>/<image_id>.jpg`` and ``query/<image_id>.jpg``."""
    metadata = pd.read_csv(real_subset / "metadata.csv", dtype=str)
    for row in metadata.itertuples():
        folder = tree / "database" / row.species / row.identity if row.split == "database" else (
            tree / "query")
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(row.path, folder / f"{row.image_id}.jpg")


@pytest.mark.hostile
def test_the_same_photos_in_two_layouts_are_added_once(real_subset, tmp_path):
    metadata = pd.read_csv(real_subset / "metadata.csv", dtype=str)
    runner = CliRunner()
    folder = tmp_path / "cat"
    assert runner.invoke(cli, ["catalog", "init", str(folder)]).exit_code == 0
    first = runner.invoke(cli, ["catalog", "add", str(folder), str(real_subset)])
    assert first.exit_code == 0, first.output
    catalog = Catalog(folder)
    photos, individuals = catalog.images(), catalog.individuals()
    assert len(photos) == len(metadata)
    tree = tmp_path / "tree"
    _as_folder_tree(real_subset, tree)

    again = catalog.add_dataset(tree)
    assert again.added == 0 and again.waiting == 0 and again.skipped == []
    assert len(again.duplicates) == len(metadata)
    # Each skipped photo is reported with the id it is already in the catalog under.
    by_tree_id = {f"database/{r.species}/{r.identity}/{r.image_id}" if r.split == "database"
                  else f"query/{r.image_id}": r.image_id for r in metadata.itertuples()}
    assert again.duplicates == by_tree_id
    pd.testing.assert_frame_equal(catalog.images(), photos)
    pd.testing.assert_frame_equal(catalog.individuals(), individuals)
    assert len(list(catalog.photos.iterdir())) == len(metadata)

    shown = runner.invoke(cli, ["catalog", "add", str(folder), str(tree)])
    assert shown.exit_code == 0, shown.output
    output = " ".join(shown.output.split())
    assert f"skipped {len(metadata)} photos already in the catalog" in output
    assert "added 0 identified photos and 0 waiting" in output
    assert len(Catalog(folder).images()) == len(metadata)


@pytest.mark.hostile
def test_a_photo_listed_twice_in_one_dataset_is_added_once(real_subset, tmp_path):
    rows = _database(real_subset).head(3)
    twice = pd.concat([rows, rows.head(1).assign(image_id="copy-of-first")])
    folder = tmp_path / "twice"
    folder.mkdir()
    twice.to_csv(folder / "metadata.csv", index=False)
    catalog = Catalog.create(tmp_path / "cat")
    imported = catalog.add_dataset(folder)
    assert imported.added == 3 and imported.duplicates == {"copy-of-first": rows["image_id"].iloc[0]}
    assert sorted(catalog.images()["image_id"]) == sorted(rows["image_id"])
