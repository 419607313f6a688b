"""The accurate preset's choice of pipeline per species (wildreid.selection): the score, its
standard error, the rule, and the whole selection on real photos."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from wildreid.cli import app
from wildreid.data import NEW_INDIVIDUAL, load_dataset
from wildreid.metrics import baks, baus, geometric_score, open_set_score, paired_gain
from wildreid.pipeline import Identifier
from wildreid.rerank import LocalReranking
from wildreid.selection import (
    MENU,
    Evaluation,
    PipelineSelection,
    choose,
    with_settings,
)

BENCH = Path(__file__).resolve().parents[2] / "shared" / "bench" / "nyala-lion"


def _answers(rng, identity, unknown, right_share):
    """Correct-per-query flags drawn with ``right_share`` for every query."""
    return rng.random(len(identity)) < right_share


def test_open_set_score_is_the_task_score():
    rng = np.random.default_rng(0)
    identity = np.array([f"id{i % 17}" for i in range(120)], dtype=object)
    unknown = np.isin(identity, ["id3", "id7", "id11", "id16"])
    correct = rng.random(120) < 0.6
    # The same answers as the task's metrics see them.
    truth = identity.copy()
    predicted = np.where(unknown, np.where(correct, NEW_INDIVIDUAL, "someone"),
                         np.where(correct, identity, "someone"))
    names = set(identity[unknown])
    expected = geometric_score(baks(truth, predicted, names), baus(truth, predicted, names))
    assert open_set_score(correct, identity, unknown) == pytest.approx(expected)
    assert open_set_score(correct, identity, unknown, closed_set=True) == pytest.approx(
        baks(truth, predicted, names))


def test_the_gain_standard_error_is_the_paired_one():
    """One query per identity, closed set: the bootstrap standard error of the gain is the
    textbook sd(differences) / sqrt(n), and it is paired (far below the unpaired one when both
    candidates answer alike)."""
    rng = np.random.default_rng(1)
    n = 400
    identity = np.array([f"id{i}" for i in range(n)], dtype=object)
    unknown = np.zeros(n, bool)
    baseline = rng.random(n) < 0.5
    better = baseline.copy()
    flip = rng.choice(n, 40, replace=False)
    better[flip] = True  # better on a few queries, the same elsewhere
    gain, error = paired_gain(better, baseline, identity, unknown, closed_set=True)
    difference = better.astype(float) - baseline.astype(float)
    assert gain == pytest.approx(difference.mean())
    assert error == pytest.approx(difference.std(ddof=1) / np.sqrt(n), rel=0.15)
    unpaired = np.sqrt(better.var() / n + baseline.var() / n)
    assert error < unpaired / 2


def _evaluation(name, correct, identity, unknown, status="evaluated"):
    return Evaluation(name, status, score=open_set_score(correct, identity, unknown),
                      correct=correct)


def test_a_dearer_candidate_is_chosen_only_beyond_two_standard_errors():
    rng = np.random.default_rng(2)
    identity = np.array([f"id{i % 60}" for i in range(300)], dtype=object)
    unknown = np.isin(identity, [f"id{i}" for i in range(20)])
    cosine = rng.random(300) < 0.5
    close = cosine.copy()
    close[rng.choice(300, 6, replace=False)] = True  # a query or two better: noise
    far = cosine | (rng.random(300) < 0.5)  # many queries better
    evaluations = [_evaluation("cosine", cosine, identity, unknown),
                   _evaluation("sift", close, identity, unknown),
                   _evaluation("aliked-nn", far, identity, unknown),
                   Evaluation("aliked-nn+lightglue", "over budget")]
    chosen, reason = choose(evaluations, identity, unknown)
    sift, aliked = evaluations[1], evaluations[2]
    assert 0 < sift.gain <= 2 * sift.standard_error  # not enough to move to sift
    assert aliked.against == "cosine" and aliked.gain > 2 * aliked.standard_error
    assert chosen == "aliked-nn"
    assert "more than 2 standard errors" in reason and "aliked-nn+lightglue (over budget)" in reason
    # Nothing beats the cosine clearly: the cosine (the fast preset) stays.
    chosen, reason = choose(evaluations[:2], identity, unknown)
    assert chosen == "cosine" and reason.startswith("cosine: the cheapest")


def test_a_place_the_user_named_holds_for_every_local_candidate():
    menu = with_settings(MENU, keypoints_on="image")
    assert [c.name for c in menu] == ["cosine", "sift/image", "aliked-nn/image",
                                      "aliked-nn+lightglue/image"]
    assert all(c.settings["keypoints_on"] == "image" for c in menu[1:])
    assert not any(c.on_animal for c in menu) and MENU[2].on_animal


def _lions(folder: Path, identities: int = 10, dated: bool = True) -> Path:
    """A lion dataset of real photos: ``identities`` database lions (all their database photos),
    their queries, and the queries of 3 lions absent from the database; ``dated``: each photo
    taken on a day of its own (each its own encounter)."""
    metadata = pd.read_csv(BENCH / "metadata.csv", dtype=str, keep_default_na=False)
    truth = pd.read_csv(BENCH / "solution.csv", dtype=str).set_index("image_id")["identity"]
    lion = metadata[metadata["species"] == "lion"].copy()
    lion["truth"] = np.where(lion["split"] == "database", lion["identity"],
                             lion["image_id"].map(truth))
    counts = lion[lion["split"] == "database"].groupby("identity").size()
    chosen = sorted(counts[counts >= 4].index)[:identities]
    known = set(lion.loc[lion["split"] == "database", "identity"])
    unseen = sorted(set(lion.loc[lion["split"] == "query", "truth"]) - known)[:3]
    rows = lion[lion["truth"].isin(chosen + unseen)].copy()
    rows["path"] = [str(BENCH / path) for path in rows["path"]]
    folder.mkdir(parents=True, exist_ok=True)
    rows["date"] = ([str(day.date()) for day in pd.date_range("2024-01-01", periods=len(rows))]
                    if dated else "")
    rows.drop(columns="truth").to_csv(folder / "metadata.csv", index=False)
    rows.loc[rows["split"] == "query", ["image_id", "truth"]].rename(
        columns={"truth": "identity"}).to_csv(folder / "solution.csv", index=False)
    return folder


@pytest.mark.bench
@pytest.mark.slow
def test_the_cost_model_charges_ransac_to_the_candidates_that_calibrate_inliers():
    """A candidate whose pair score is RANSAC's inliers runs RANSAC on every pair: its matching
    is predicted at the seconds measured with RANSAC, the others' without; the cascade's later
    matcher too. (Seconds set by hand: what is tested is which figure a prediction reads.)"""
    from wildreid.selection import Candidate, CostModel, pair_key

    cost = CostModel({})
    cost.photo_seconds = {"aliked": 0.0, "aliked-nn": 0.0}
    cost.pair_seconds = {"aliked-nn": 0.001, pair_key("aliked-nn", True): 0.01,
                         "aliked": 0.1, pair_key("aliked", True): 0.2}
    plain = Candidate("nn", {"features": ("aliked-nn",), "pair_score": "matches@0.5"})
    inliers = Candidate("nn-inliers", {"features": ("aliked-nn",), "pair_score": "inliers"})
    per_species = Candidate("nn-some", {"features": ("aliked-nn",),
                                        "pair_score": {"nyala": "inliers"}})
    cascade = Candidate("cascade", {"features": ("aliked-nn", "aliked"), "cascade": 10,
                                    "pair_score": "inliers"})
    pairs = (300 + 100) * 50  # calibration and query pairs at a shortlist of 50
    assert cost.predict(plain, 1000, 100, 0, 50) == pytest.approx(pairs * 0.001)
    assert cost.predict(inliers, 1000, 100, 0, 50) == pytest.approx(pairs * 0.01)
    assert cost.predict(per_species, 1000, 100, 0, 50) == pytest.approx(pairs * 0.01)
    assert cost.predict(cascade, 1000, 100, 0, 50) == pytest.approx(
        pairs * 0.01 + (300 + 100) * 10 * 0.2)


def test_selection_on_real_photos_chooses_by_the_rule_and_answers_every_query(tmp_path):
    """Cosine against SIFT (whole photo) on real, dated lion photos: each candidate scored on
    held-out photos of the database with a standard error; the choice follows the rule; every
    query answered by the chosen pipeline; with no budget left the choice is the cosine,
    answering exactly as the fast preset does; without dates whole-photo SIFT is not tried."""
    dataset = load_dataset(_lions(tmp_path))
    settings = dict(device="cpu", cache_dir=tmp_path / "cache", progress=False)
    shared = LocalReranking(long_side=256, shortlist=20)  # every local candidate's
    selection = PipelineSelection((MENU[0], MENU[1]), settings=settings, reranking=shared,
                                  budget=1e9).fit(
        dataset.database, dataset.query)
    first, second = selection.evaluations_["lion"]
    assert (first.candidate, second.candidate) == ("cosine", "sift/image")
    assert first.status == second.status == "evaluated"
    assert np.isfinite(second.standard_error) and second.standard_error > 0
    assert second.against == "cosine"
    expected = "sift/image" if second.gain > 2 * second.standard_error else "cosine"
    assert selection.choice_["lion"] == expected
    chosen = selection.identifiers_["lion"].reranking
    if expected == "cosine":
        assert chosen is None
    else:  # the candidate's own settings over the shared ones; the shared object never fitted
        assert (chosen.features, chosen.keypoints_on, chosen.long_side) == (("sift",), "image",
                                                                           256)
        assert chosen.shortlist in (20, 50) and not hasattr(shared, "calibration_")
    answers = selection.predict(dataset.query)
    assert list(answers["image_id"]) == list(dataset.query["image_id"])
    development = selection.summary()["species"]["lion"]["development"]
    assert development["queries"] > 0 and development["unknown"] > 0
    # No budget: SIFT is not tried, and the answers are the fast preset's.
    broke = PipelineSelection((MENU[0], MENU[1]), settings=settings, reranking=shared,
                              budget=0).fit(
        dataset.database, dataset.query)
    assert broke.choice_["lion"] == "cosine"
    assert broke.evaluations_["lion"][1].status == "over budget"
    fast = Identifier(device="cpu", cache_dir=tmp_path / "cache", progress=False).fit(
        dataset.database).predict(dataset.query)
    pd.testing.assert_frame_equal(broke.predict(dataset.query)[["image_id", "identity"]],
                                  fast[["image_id", "identity"]])
    undated = load_dataset(_lions(tmp_path / "undated", dated=False))
    blind = PipelineSelection((MENU[0], MENU[1]), settings=settings, reranking=shared,
                              budget=0).fit(
        undated.database, undated.query)
    assert blind.evaluations_["lion"][1].status.startswith("no dates")
    assert "sift/image (no dates" in blind.reason_["lion"]


@pytest.mark.slow
def test_the_accurate_preset_records_what_it_chose_and_why(real_subset, tmp_path):
    """``identify --preset accurate`` with no other flag: run.json says, per species, the
    choice, why, and every candidate's evidence; the terminal says it too."""
    output = tmp_path / "run" / "submission.csv"
    result = CliRunner().invoke(app, ["identify", str(real_subset), "--preset", "accurate",
                                      "--budget", "0", "--device", "cpu", "--output",
                                      str(output), "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 0, result.output
    info = json.loads((output.parent / "run.json").read_text())
    assert info["selection"]["budget_seconds"] == 0
    for name in ("nyala", "lion"):
        chosen = info["selection"]["species"][name]
        assert chosen["chosen"] == "cosine" and chosen["why"] in result.output
        assert info["chosen"][name] == {"local": []}
    assert len(pd.read_csv(output)) == (pd.read_csv(real_subset / "metadata.csv")["split"]
                                        == "query").sum()
    result = CliRunner().invoke(app, ["identify", str(real_subset), "--budget", "-1"])
    assert result.exit_code == 2
