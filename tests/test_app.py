"""The review app's HTTP API on a real catalog (FastAPI's test client, no browser)."""

from __future__ import annotations

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from wildreid.app import create_app
from wildreid.catalog import Catalog


@pytest.fixture()
def client(real_subset, tmp_path):
    catalog = Catalog.create(tmp_path / "cat")
    catalog.add_dataset(real_subset)
    return TestClient(create_app(tmp_path / "cat", max_upload_bytes=2_000_000)), tmp_path / "cat"


def test_upload_confirm_new_and_persist(client, real_subset):
    http, folder = client
    assert "Identify a photo" in http.get("/").text
    names = [row["name"] for row in http.get("/api/individuals").json()]
    first = http.get(f"/api/individuals/{names[0]}/photos").json()
    assert http.get(f"/photos/{first[0]}").headers["content-type"].startswith("image/")
    queries = pd.read_csv(real_subset / "metadata.csv", dtype=str).query("split == 'query'")
    one, two = queries.iloc[0], queries.iloc[-1]
    with open(one["path"], "rb") as handle:
        answer = http.post("/api/queries", files={"photo": ("q.jpg", handle, "image/jpeg")},
                           data={"species": one["species"]}).json()
    assert answer["candidates"] and answer["candidates"][0]["rank"] == 1
    chosen = answer["candidates"][0]["identity"]
    assert http.post(f"/api/queries/{answer['image_id']}/confirm",
                     data={"individual": chosen}).status_code == 200
    with open(two["path"], "rb") as handle:
        second = http.post("/api/queries", files={"photo": ("r.jpg", handle, "image/jpeg")},
                           data={"species": two["species"]}).json()
    created = http.post(f"/api/queries/{second['image_id']}/new").json()["individual"]
    restarted = TestClient(create_app(folder))  # a new server on the same catalog
    rows = {r["name"]: r["photos"] for r in restarted.get("/api/individuals").json()}
    assert rows[created] == 1
    assert answer["image_id"] in restarted.get(f"/api/individuals/{chosen}/photos").json()


def test_uploads_are_checked_and_nothing_outside_is_served(client, tmp_path):
    http, _ = client
    refused = http.post("/api/queries", files={"photo": ("notes.jpg", b"hello", "image/jpeg")})
    assert refused.status_code == 400 and "notes.jpg" in refused.json()["detail"]
    big = http.post("/api/queries", files={"photo": ("big.jpg", b"0" * 2_000_001, "image/jpeg")})
    assert big.status_code == 413
    for attempt in ("/photos/..%2F..%2Fcatalog.sqlite", "/photos/../catalog.sqlite",
                    "/photos/%2Fetc%2Fpasswd", "/photos/nothing"):
        response = http.get(attempt)
        assert response.status_code == 404 and b"SQLite" not in response.content
    assert http.post("/api/queries/nothing/confirm", data={"individual": "x"}).status_code == 400


def test_waiting_photos_and_what_scores_mean(client, real_subset, tmp_path):
    http, folder = client
    queries = pd.read_csv(real_subset / "metadata.csv", dtype=str).query("split == 'query'")
    image_id = Catalog(folder).add_photo(queries["path"].iloc[0], None, queries["species"].iloc[0])
    waiting = http.get("/api/queries").json()
    assert waiting["queries"] == [image_id] and waiting["score"] == "cosine similarity"
    assert http.get(f"/api/queries/{image_id}/candidates").json()[0]["rank"] == 1
    accurate = Catalog.create(tmp_path / "accurate", preset="accurate")
    assert TestClient(create_app(accurate.folder)).get("/api/queries").json()["score"].startswith(
        "calibrated")
    with pytest.raises(ValueError, match="unknown preset"):
        Catalog.create(tmp_path / "bad", preset="slow")
