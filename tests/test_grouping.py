"""``--cluster-new``: queries answered new_individual grouped into proposed new individuals, on
real photos, with the cut fitted on the database; its scores, and the review app's one-step
acceptance of a proposed group."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient
from sklearn.metrics import adjusted_rand_score
from typer.testing import CliRunner

from wildreid.app import create_app
from wildreid.catalog import Catalog
from wildreid.cli import app
from wildreid.grouping import _ari, cluster, grouping_scores, is_new, is_proposed, pair_counts

runner = CliRunner()


def test_pair_counts_and_the_adjusted_rand_index_agree_with_scikit_learn():
    rng = np.random.default_rng(0)
    for _ in range(20):
        truth, labels = rng.integers(0, 6, 50), rng.integers(0, 4, 50)
        assert _ari(pair_counts(truth, labels)) == pytest.approx(adjusted_rand_score(truth, labels))
    counts = pair_counts(["a", "a", "a", "b"], [0, 0, 1, 1])  # pairs: aa aa aa ab ab ab
    assert counts.tolist() == [1, 1, 2, 2]  # together right, together wrong, apart wrong, apart
    scores = grouping_scores(["a", "a", "a", "b"], [0, 0, 1, 1])
    assert scores["pairwise_precision"] == 0.5 and scores["pairwise_recall"] == pytest.approx(1 / 3)


def test_a_tree_is_cut_at_the_threshold():
    similarity = np.array([[1, .9, .2], [.9, 1, .3], [.2, .3, 1]])
    assert len(set(cluster(similarity, "average", 0.8))) == 2
    assert len(set(cluster(similarity, "average", 0.95))) == 3
    assert len(set(cluster(similarity, "single", 0.25))) == 1
    assert cluster(np.ones((1, 1)), "average", 0.5).tolist() == [0]


def test_proposed_names_are_told_from_database_names():
    answers = ["new_individual", "new_individual_12", "new_individual_", "lion_7", None,
               "new_individual_3b"]
    assert is_new(answers).tolist() == [True, True, False, False, False, False]
    assert is_proposed(answers).tolist() == [False, True, False, False, False, False]


@pytest.mark.slow
def test_three_unknown_individuals_come_out_as_three_groups(bursts, tmp_path):
    output = tmp_path / "run" / "submission.csv"
    # A threshold no query reaches: every query is new, so all three bursts are grouped (which of
    # them the fitted threshold would call new is the open-set decision's business, not this).
    result = runner.invoke(app, ["identify", str(bursts), "--cluster-new", "--threshold", "0.99",
                                 "--output", str(output), "--cache-dir", str(tmp_path / "cache"),
                                 "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "new individuals: 3 proposed for 12 queries" in result.output
    answers = pd.read_csv(output, dtype=str).merge(
        pd.read_csv(bursts / "solution.csv", dtype=str), on="image_id", suffixes=("", "_true"))
    assert answers["identity"].nunique() == 3 and is_proposed(answers["identity"]).all()
    assert (answers.groupby("identity")["identity_true"].nunique() == 1).all()
    cut = json.loads((output.parent / "run.json").read_text())["grouping"]["lion"]
    assert cut["linkage"] in ("average", "complete", "single") and 0 < cut["threshold"] < 1

    scored = runner.invoke(app, ["evaluate", str(output), str(bursts / "solution.csv"), "--json"])
    grouping = json.loads(scored.output)["new_individuals"]
    assert grouping["ari"] == 1 and grouping["pairwise_f1"] == 1
    assert json.loads(scored.output)["species"]["lion"]["baus"] == 1  # proposed names are new

    # The fitted threshold decides itself; whatever it calls new is grouped by individual.
    auto = tmp_path / "auto" / "submission.csv"
    assert runner.invoke(app, ["identify", str(bursts), "--cluster-new", "--output", str(auto),
                               "--cache-dir", str(tmp_path / "cache"),
                               "--device", "cpu"]).exit_code == 0
    answers = pd.read_csv(auto, dtype=str).merge(
        pd.read_csv(bursts / "solution.csv", dtype=str), on="image_id", suffixes=("", "_true"))
    proposed = answers[is_proposed(answers["identity"])]
    assert len(proposed) >= 8  # two bursts or more answered new
    assert (proposed.groupby("identity")["identity_true"].nunique() == 1).all()
    assert (proposed.groupby("identity_true")["identity"].nunique() == 1).all()

    report = runner.invoke(app, ["report", str(output.parent)])
    assert report.exit_code == 0, report.output
    page = (output.parent / "report.html").read_text()
    assert "Proposed new individuals" in page and "adjusted Rand index 1.000" in page


@pytest.mark.slow
def test_a_proposed_group_is_accepted_as_one_new_individual_in_one_step(bursts, tmp_path):
    catalog = Catalog.create(tmp_path / "catalog")
    catalog.add_dataset(bursts)  # the bursts wait for review
    http = TestClient(create_app(tmp_path / "catalog"), base_url="http://127.0.0.1")
    groups = http.get("/api/groups").json()["groups"]
    truth = pd.read_csv(bursts / "solution.csv", dtype=str).set_index("image_id")["identity"]
    assert len(groups) >= 2
    for group in groups:
        assert group["species"] == "lion" and len(group["photos"]) == 4
        assert truth[group["photos"]].nunique() == 1
    photos = groups[0]["photos"]
    made = http.post("/api/new-group", data={"image_id": photos, "name": "Lion of the burst"})
    assert made.status_code == 200, made.text
    assert catalog.individual("Lion of the burst")["count"] == 4
    assert http.get("/api/queries").json()["reviewed"] == 4
    assert not set(photos) & set(http.get("/api/queries").json()["queries"])
    assert http.post("/api/new-group", data={"image_id": photos}).status_code == 409  # replayed
    assert all(set(g["photos"]) != set(photos) for g in http.get("/api/groups").json()["groups"])
    undone = http.post("/api/undo").json()
    assert undone["kind"] == "group" and undone["individual"] == "Lion of the burst"
    assert set(photos) <= set(http.get("/api/queries").json()["queries"])  # all four wait again
    assert http.get("/api/individual", params={"name": "Lion of the burst"}).status_code == 404
    reserved = http.post("/api/new-group", data={"image_id": photos, "name": "new_individual_4"})
    assert reserved.status_code == 400 and "answers for unseen animals" in reserved.text
    one = http.post("/api/new-group", data={"image_id": photos[:1]})
    assert one.status_code == 400 and "two photos or more" in one.text
