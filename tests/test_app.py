"""The review app's HTTP API on a real catalog (FastAPI's test client, no browser), and what it
protects against: hosts it was not bound to, cross-site requests, uploads that are pages, uploads
over the limit, names that cannot be reached."""

from __future__ import annotations

import io
import shutil
import socket
import sqlite3
from pathlib import Path

import pandas as pd
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.conftest import LiveServer
from wildreid.app import create_app
from wildreid.catalog import Catalog

LOCAL = "http://127.0.0.1"


@pytest.fixture()
def client(real_subset, tmp_path):
    catalog = Catalog.create(tmp_path / "cat")
    catalog.add_dataset(real_subset, queries=False)  # no photo waits: each test adds its own
    app = create_app(tmp_path / "cat", max_upload_bytes=2_000_000)
    return TestClient(app, base_url=LOCAL), tmp_path / "cat"


def _queries(real_subset) -> pd.DataFrame:
    return pd.read_csv(real_subset / "metadata.csv", dtype=str).query("split == 'query'")


def test_upload_confirm_new_and_persist(client, real_subset):
    http, folder = client
    page = http.get("/")
    assert "Upload a photo to identify" in page.text and "<script>" not in page.text  # no inline
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert http.get("/static/review.js").headers["content-type"].startswith("text/javascript")
    names = [row["name"] for row in http.get("/api/individuals").json()]
    first = http.get("/api/photos", params={"individual": names[0]}).json()
    shown = http.get("/photo", params={"image_id": first[0]})
    assert shown.headers["content-type"] == "image/jpeg"
    assert shown.headers["x-content-type-options"] == "nosniff"
    one, two = _queries(real_subset).iloc[0], _queries(real_subset).iloc[-1]
    with open(one["path"], "rb") as handle:
        answer = http.post("/api/queries", files={"photo": ("q.jpg", handle, "image/jpeg")},
                           data={"species": one["species"]}).json()
    assert answer["candidates"] and answer["candidates"][0]["rank"] == 1
    chosen = answer["candidates"][0]["identity"]
    assert http.post("/api/confirm", data={"image_id": answer["image_id"],
                                           "individual": chosen}).status_code == 200
    with open(two["path"], "rb") as handle:
        second = http.post("/api/queries", files={"photo": ("r.jpg", handle, "image/jpeg")},
                           data={"species": two["species"]}).json()
    created = http.post("/api/new", data={"image_id": second["image_id"]}).json()["individual"]
    restarted = TestClient(create_app(folder), base_url=LOCAL)  # a new server, same catalog
    rows = {r["name"]: r["photos"] for r in restarted.get("/api/individuals").json()}
    assert rows[created] == 1
    assert answer["image_id"] in restarted.get("/api/photos", params={"individual": chosen}).json()


def test_uploads_are_checked_and_nothing_outside_is_served(client, tmp_path):
    http, _ = client
    refused = http.post("/api/queries", files={"photo": ("notes.jpg", b"hello", "image/jpeg")})
    assert refused.status_code == 400 and "notes.jpg" in refused.json()["detail"]
    big = http.post("/api/queries", files={"photo": ("big.jpg", b"0" * 2_000_001, "image/jpeg")})
    assert big.status_code == 413
    for image_id in ("../catalog.sqlite", "../../catalog.sqlite", "/etc/passwd", "nothing"):
        response = http.get("/photo", params={"image_id": image_id})
        assert response.status_code == 404 and b"SQLite" not in response.content
    assert http.post("/api/confirm", data={"image_id": "nothing",
                                           "individual": "x"}).status_code == 400


def test_an_html_polyglot_upload_is_stored_and_served_as_an_image(client):
    http, folder = client
    picture = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(picture, format="PNG")
    polyglot = picture.getvalue() + b"<html><script>alert(document.domain)</script></html>"
    answer = http.post("/api/queries", files={"photo": ("page.html", polyglot, "text/html")})
    assert answer.status_code == 200, answer.text
    served = http.get("/photo", params={"image_id": answer.json()["image_id"]})
    assert served.headers["content-type"] == "image/png"
    assert served.headers["x-content-type-options"] == "nosniff"
    stored = [p.name for p in (folder / "photos").iterdir()]
    assert not any(name.endswith((".html", ".htm")) or "page" in name for name in stored)


def _raw(port: int, request: bytes) -> bytes:
    """The server's whole answer to ``request`` (it closes the connection after refusing)."""
    reply = b""
    with socket.create_connection(("127.0.0.1", port), timeout=20) as connection:
        connection.sendall(request)
        while chunk := connection.recv(4096):
            reply += chunk
    return reply


def test_an_upload_over_the_limit_is_refused_before_it_is_read(real_subset, tmp_path):
    Catalog.create(tmp_path / "cat").add_dataset(real_subset, queries=False)
    with LiveServer(tmp_path / "cat", max_upload_bytes=1_000_000) as url:
        port = int(url.rsplit(":", 1)[1].strip("/"))
        # Headers only: a server that waited for the 5 GB body would never answer.
        reply = _raw(port, b"POST /api/queries HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                           b"Content-Type: multipart/form-data; boundary=x\r\n"
                           b"Content-Length: 5000000000\r\n\r\n")
        assert reply.startswith(b"HTTP/1.1 413") and b"larger than" in reply
        # A small Content-Length beside a chunked body of any size: refused, not read.
        reply = _raw(port, b"POST /api/queries HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                           b"Content-Type: multipart/form-data; boundary=x\r\n"
                           b"Content-Length: 10\r\nTransfer-Encoding: chunked\r\n\r\n"
                           b"100000\r\n")
        assert reply.startswith(b"HTTP/1.1 4"), reply[:40]  # 400 from h11 or our 411
        # Decisions are small: a 1 MB form is refused by its length.
        reply = _raw(port, b"POST /api/new HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                           b"Content-Type: application/x-www-form-urlencoded\r\n"
                           b"Content-Length: 1000000\r\n\r\n")
        assert reply.startswith(b"HTTP/1.1 413")


def test_only_whole_camera_images_are_stored(client, real_subset):
    http, folder = client
    before = len(Catalog(folder).images())
    jpeg = Path(_queries(real_subset)["path"].iloc[0]).read_bytes()
    ppm = b"P6\n64 48\n255\n" + bytes(64 * 48 * 3)
    broken_ppm = b"P6\n64 4x\n255\n" + bytes(64 * 48 * 3)  # a malformed header
    for name, data in (("cut.jpg", jpeg[:3000]), ("a.ppm", ppm), ("b.ppm", broken_ppm)):
        refused = http.post("/api/queries", files={"photo": (name, data, "image/jpeg")},
                            data={"species": "nyala"})
        assert refused.status_code == 400, (name, refused.text)
        assert name in refused.json()["detail"] and "/tmp" not in refused.json()["detail"]
    assert len(Catalog(folder).images()) == before


def test_decisions_are_not_replayed_and_no_page_elsewhere_drives_the_app(client, real_subset):
    http, folder = client
    image_id = Catalog(folder).add_photo(_queries(real_subset)["path"].iloc[0], None, "nyala")
    assert http.post("/api/new", data={"image_id": image_id}).status_code == 200
    assert http.post("/api/new", data={"image_id": image_id}).status_code == 409  # a double click
    someone = Catalog(folder).individuals()["name"].iloc[0]
    assert http.post("/api/confirm", data={"image_id": image_id,
                                           "individual": someone}).status_code == 409
    for site in ("cross-site", "same-site"):  # e.g. <img src=http://127.0.0.1:8000/api/...>
        response = http.get("/api/candidates", params={"image_id": image_id},
                            headers={"sec-fetch-site": site})
        assert response.status_code == 403
    assert http.get("/api/individuals", headers={"sec-fetch-site": "same-origin"}).status_code == 200
    missing = http.get("/photo", params={"image_id": "nothing"})
    assert missing.status_code == 404 and "/" not in missing.json()["detail"].replace(
        "image 'nothing'", "")
    other = Catalog(folder).add_photo(_queries(real_subset)["path"].iloc[1], None, "nyala")
    behind_https_proxy = http.post("/api/new", data={"image_id": other},
                                   headers={"origin": "https://127.0.0.1"})
    assert behind_https_proxy.status_code == 200


def test_a_species_the_catalog_lacks_is_refused_and_nothing_is_stored(client, real_subset):
    http, folder = client
    before = len(Catalog(folder).images())
    with open(_queries(real_subset)["path"].iloc[0], "rb") as handle:
        refused = http.post("/api/queries", files={"photo": ("q.jpg", handle, "image/jpeg")},
                            data={"species": "zebra"})
    assert refused.status_code == 400
    assert "zebra" in refused.json()["detail"] and "nyala" in refused.json()["detail"]
    assert len(Catalog(folder).images()) == before and http.get("/api/queries").json()[
        "queries"] == []


def test_requests_for_other_hosts_and_from_other_sites_are_refused(client, real_subset):
    http, folder = client
    rebound = http.get("/api/individuals", headers={"host": "attacker.example"})
    assert rebound.status_code == 400  # DNS rebinding: the name is not one the app was bound to
    image_id = Catalog(folder).add_photo(_queries(real_subset)["path"].iloc[0], None, "nyala")
    someone = Catalog(folder).individuals()["name"].iloc[0]
    relabel = {"image_id": image_id, "individual": someone}
    for foreign in ({"origin": "http://attacker.example"}, {"origin": "null"},
                    {"referer": "http://attacker.example/page.html"},
                    {"origin": "http://127.0.0.1:9999"}):
        response = http.post("/api/confirm", data=relabel, headers=foreign)
        assert response.status_code == 403, foreign
    assert Catalog(folder).decisions().empty and http.get("/api/queries").json()["queries"] == [
        image_id]
    own = http.post("/api/confirm", data=relabel, headers={"origin": LOCAL})
    assert own.status_code == 200 and len(Catalog(folder).decisions()) == 1


def test_names_are_checked_and_names_with_slashes_stay_reachable(client, real_subset):
    http, folder = client
    paths = _queries(real_subset)["path"]
    first = Catalog(folder).add_photo(paths.iloc[0], None, "nyala")
    for bad in ("new_individual", "New_Individual", "x" * 201, "line\nbreak"):  # blank: named for you
        refused = http.post("/api/new", data={"image_id": first, "name": bad})
        assert refused.status_code == 400, bad
    made = http.post("/api/new", data={"image_id": first, "name": "lion/7"}).json()
    assert made["individual"] == "lion/7"
    assert http.get("/api/photos", params={"individual": "lion/7"}).json() == [first]
    second = Catalog(folder).add_photo(paths.iloc[1], None, "nyala", image_id="a/b/../c")
    assert http.post("/api/confirm", data={"image_id": second,
                                           "individual": "lion/7"}).status_code == 200
    assert http.get("/photo", params={"image_id": "a/b/../c"}).status_code == 200
    assert sorted(http.get("/api/photos", params={"individual": "lion/7"}).json()) == sorted(
        [first, second])


def test_waiting_photos_and_what_scores_mean(client, real_subset, tmp_path):
    http, folder = client
    queries = _queries(real_subset)
    image_id = Catalog(folder).add_photo(queries["path"].iloc[0], None, queries["species"].iloc[0])
    waiting = http.get("/api/queries").json()
    assert waiting["queries"] == [image_id] and waiting["score"] == "cosine similarity"
    ranked = http.get("/api/candidates", params={"image_id": image_id}).json()
    assert ranked["candidates"][0]["rank"] == 1 and len(ranked["candidates"][0]["photos"]) >= 1
    # Each candidate names the photo whose pair gave its score: the one its matches draw.
    best, runner_up = ranked["candidates"][0], ranked["candidates"][1]
    assert best["image"] in http.get("/api/photos", params={"individual": best["identity"]}).json()
    refused = http.get("/api/matches", params={"image_id": image_id, "individual": best["identity"],
                                               "photo": runner_up["image"]})
    assert refused.status_code == 404 and "is not a photo of individual" in refused.text
    assert ranked["verdict"].startswith(("likely", "probably a new individual"))
    assert ranked["threshold"] is not None and str(round(ranked["threshold"], 2)) in ranked[
        "verdict"]
    accurate = Catalog.create(tmp_path / "accurate", preset="accurate")
    assert TestClient(create_app(accurate.folder), base_url=LOCAL).get(
        "/api/queries").json()["score"].startswith("calibrated")
    with pytest.raises(ValueError, match="unknown preset"):
        Catalog.create(tmp_path / "bad", preset="slow")


def test_undo_merge_export_and_individual_pages(client, real_subset, tmp_path):
    http, folder = client
    paths = _queries(real_subset)["path"]
    image_id = Catalog(folder).add_photo(paths.iloc[0], None, "nyala")
    names = Catalog(folder).individuals().query("species == 'nyala'")["name"].tolist()
    assert http.post("/api/confirm", data={"image_id": image_id,
                                           "individual": names[0]}).status_code == 200
    assert http.get("/api/queries").json()["reviewed"] == 1
    page = http.get("/api/individual", params={"name": names[0]}).json()
    assert image_id in page["photos"] and page["count"] == len(page["photos"])
    assert page["species"] == "nyala"
    # The benchmark's photos carry no dates: none is made up from the day of import.
    assert page["dated"] == 0 and page["first"] is None and page["last"] is None
    merged = http.post("/api/merge", data={"source": names[0], "target": names[1]}).json()
    assert merged["moved"] == page["count"]
    assert http.get("/api/individual", params={"name": names[0]}).status_code == 404
    assert http.post("/api/merge", data={"source": names[1], "target": "lion_x"}).status_code == 400
    assert http.post("/api/undo").json()["kind"] == "merge"  # the merge, then the confirm
    assert http.get("/api/individual", params={"name": names[0]}).json()["count"] == page["count"]
    assert http.post("/api/undo").json() == {"kind": "confirm", "image_id": image_id,
                                             "individual": names[0]}
    assert http.get("/api/queries").json()["queries"] == [image_id]
    assert http.post("/api/undo").status_code == 409  # nothing left to undo
    exported = http.get("/api/export")
    assert exported.headers["content-type"].startswith("text/csv")
    table = pd.read_csv(io.StringIO(exported.text), dtype=str)
    # Absolute: the download lands in the browser's folder, not beside the catalog.
    assert Path(table["path"].iloc[0]).is_absolute() and Path(table["path"].iloc[0]).is_file()
    assert table.set_index("image_id").loc[image_id, "split"] == "query"


def test_the_verdict_never_reads_equal_numbers_as_under():
    """A score just under the threshold shows the digits that tell them apart."""
    ranked = pd.DataFrame({"identity": ["lion_a"], "score": [0.8191]})
    ranked.attrs["threshold"] = 0.8194
    said = Catalog.verdict(ranked, "lion")
    assert "0.819" in said and "0.820" not in said and "0.82," not in said
    assert said.startswith("probably a new individual") and "0.8191" in said and "0.8194" in said
    ranked.attrs["threshold"] = 0.5
    assert Catalog.verdict(ranked, "lion").startswith("likely lion_a: 0.82, at or over")


@pytest.mark.slow
def test_waiting_photos_are_ranked_ahead_and_ordered_by_need(real_subset, tmp_path):
    """The app ranks waiting photos in the background as they arrive: the candidates a page
    asks for are those ranked ahead (the same as ranking the photo alone), the queue can be put
    least certain or most certain first, and a decision ranks the rest again."""
    folder = tmp_path / "cat"
    catalog = Catalog.create(folder)
    catalog.add_dataset(real_subset, queries=False)
    waiting = [catalog.add_photo(p, None, s) for p, s in
               _queries(real_subset)[["path", "species"]].head(6).itertuples(index=False)]
    app = create_app(folder)
    http = TestClient(app, base_url=LOCAL)
    queue = http.get("/api/queries").json()  # the first visit wakes the worker
    assert queue["queries"] == waiting
    app.state.rank_ahead.settle()  # waits on the work, not on a clock
    ready = http.get("/api/queries").json()
    assert ready["ranked"] == len(waiting) and ready["ranking_error"] is None
    assert app.state.rank_ahead.catalog.is_fitted()  # a decision will grow it, not wait on a fit
    # A copy without the rankings stored in the catalog: each photo ranked alone.
    copy = Path(shutil.copytree(folder, tmp_path / "alone"))
    with sqlite3.connect(copy / "catalog.sqlite") as connection:
        connection.execute("DELETE FROM ranked")
    alone = Catalog(copy)
    best = {}
    for image_id in waiting:
        shown = http.get("/api/candidates", params={"image_id": image_id}).json()
        fresh = alone.identify(image_id)
        assert [c["identity"] for c in shown["candidates"]] == fresh["identity"].tolist()
        assert [c["score"] for c in shown["candidates"]] == pytest.approx(
            fresh["score"].round(4).tolist(), abs=2e-4)
        best[image_id] = (fresh["score"].iloc[0], fresh.attrs["threshold"])
    uncertain = http.get("/api/queries", params={"order": "uncertain"}).json()["queries"]
    margins = [abs(best[i][0] - best[i][1]) for i in uncertain]
    assert sorted(uncertain) == sorted(waiting) and margins == sorted(margins)
    confident = http.get("/api/queries", params={"order": "confident"}).json()["queries"]
    assert [best[i][0] for i in confident] == sorted((best[i][0] for i in waiting), reverse=True)
    assert http.get("/api/queries", params={"order": "<script>"}).status_code == 400
    individual = catalog.individuals()["name"].iloc[0]
    assert http.post("/api/confirm", data={"image_id": waiting[0],
                                           "individual": individual}).status_code == 200
    app.state.rank_ahead.settle()
    after = http.get("/api/queries").json()
    assert waiting[0] not in after["queries"] and after["ranked"] == len(waiting) - 1
