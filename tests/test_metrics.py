"""The AnimalCLEF 2025 score on hand-computed cases, and refusal of bad submissions."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from wildreid.metrics import SubmissionError, best_threshold, evaluate, threshold_curve

NEW = "new_individual"


@pytest.fixture()
def case():
    metadata = pd.DataFrame({
        "image_id": ["d1", "d2", "d3", "d4", *[f"q{i}" for i in range(1, 9)]],
        "identity": ["A", "B", "C", "D", *[""] * 8],
        "species": ["s1", "s1", "s1", "s2", *["s1"] * 6, "s2", "s2"],
        "split": ["database"] * 4 + ["query"] * 8,
    })
    solution = pd.DataFrame({"image_id": [f"q{i}" for i in range(1, 9)],
                             "identity": ["A", "A", "B", "X", "X", "Y", "D", "Z"]})
    submission = pd.DataFrame({"image_id": [f"q{i}" for i in range(1, 9)],
                               "identity": ["A", NEW, "B", NEW, "A", NEW, "D", "D"]})
    return submission, solution, metadata


def test_hand_computed_scores(case):
    result = evaluate(*case)
    s1, s2 = result["species"]["s1"], result["species"]["s2"]
    # s1: BAKS = mean(A 1/2, B 1) = 0.75; BAUS = mean(X 1/2, Y 1) = 0.75
    assert s1["baks"] == pytest.approx(0.75) and s1["baus"] == pytest.approx(0.75)
    assert s1["score"] == pytest.approx(0.75)
    # s2: D named right (BAKS 1), Z named D (BAUS 0)
    assert s2["baks"] == 1 and s2["baus"] == 0 and s2["score"] == 0
    assert result["score"] == pytest.approx(0.375)
    assert result["accuracy"] == pytest.approx(5 / 8)
    assert result["known_top1"] == pytest.approx(3 / 4)


def test_balancing_is_per_identity_not_per_query(case):
    submission, solution, metadata = case
    # ten more queries of A all named right: per-query accuracy would move, BAKS does not move
    # beyond A's share (A: 11/12, B: 1)
    more = pd.DataFrame({"image_id": [f"a{i}" for i in range(10)], "identity": ["A"] * 10})
    meta_more = pd.DataFrame({"image_id": more["image_id"], "identity": "", "species": "s1",
                              "split": "query"})
    result = evaluate(pd.concat([submission, more]), pd.concat([solution, more]),
                      pd.concat([metadata, meta_more]))
    assert result["species"]["s1"]["baks"] == pytest.approx((11 / 12 + 1) / 2)


def test_closed_set_species_has_no_score(case):
    submission, solution, metadata = case
    known = solution["identity"].isin(["A", "B", "D"])
    result = evaluate(submission[known], solution[known], metadata[metadata["image_id"].isin(
        [*solution["image_id"][known], "d1", "d2", "d3", "d4"])])
    assert math.isnan(result["species"]["s1"]["baus"])
    assert math.isnan(result["score"])


def test_candidates_give_closed_set_top_k(case):
    submission, solution, metadata = case
    candidates = pd.DataFrame({"image_id": ["q1", "q2", "q2", "q3", "q7"],
                               "rank": [1, 1, 2, 2, 1], "identity": ["A", "C", "A", "B", "D"],
                               "score": [0.9, 0.5, 0.4, 0.3, 0.8]})
    result = evaluate(submission, solution, metadata, candidates)
    assert result["closed_set_top1"] == pytest.approx(2 / 4)  # q1, q7 of q1,q2,q3,q7
    assert result["closed_set_top5"] == pytest.approx(4 / 4)


def test_bad_submission_lists_every_problem(case, tmp_path):
    submission, solution, metadata = case
    bad = submission.copy()
    bad = bad[bad["image_id"] != "q3"]  # missing
    bad.loc[len(bad)] = ["d1", "A"]  # not a query
    bad.loc[0, "identity"] = "Zebra"  # not in the database
    path = tmp_path / "bad.csv"
    bad.to_csv(path, index=False)
    with pytest.raises(SubmissionError) as caught:
        evaluate(path, solution, metadata)
    message = str(caught.value)
    assert "bad.csv" in message and "3 problem(s)" in message
    assert "q3" in message and "d1" in message and "Zebra" in message


def test_missing_column(case):
    submission, solution, metadata = case
    with pytest.raises(SubmissionError, match="lacks column"):
        evaluate(submission.rename(columns={"identity": "label"}), solution, metadata)


def test_threshold_curve_matches_evaluate(case):
    _, solution, metadata = case
    s1 = solution.iloc[:6]
    top = np.array(["A", "A", "B", "A", "A", "C"], dtype=object)
    score = np.array([0.9, 0.3, 0.8, 0.2, 0.7, 0.4])
    unknown = s1["identity"].isin(["X", "Y"]).to_numpy()
    curve = threshold_curve(s1["identity"], top, score, unknown, np.array([0.5]))
    answers = np.where(score >= 0.5, top, NEW)
    direct = evaluate(pd.DataFrame({"image_id": s1["image_id"], "identity": answers}), s1,
                      metadata[metadata["species"] == "s1"])["species"]["s1"]
    assert curve["baks"].iloc[0] == pytest.approx(direct["baks"])
    assert curve["baus"].iloc[0] == pytest.approx(direct["baus"])
    threshold, best = best_threshold(threshold_curve(s1["identity"], top, score, unknown))
    assert best >= curve["score"].iloc[0] and 0.2 < threshold <= 0.8


def test_metadata_lacking_columns_names_the_file(case, tmp_path):
    submission, solution, metadata = case
    path = tmp_path / "meta.csv"
    metadata.drop(columns=["split", "identity"]).to_csv(path, index=False)
    with pytest.raises(SubmissionError) as caught:
        evaluate(submission, solution, path)
    message = str(caught.value)
    assert str(path) in message and "lacks column(s) identity, split" in message


def test_solution_lacking_columns_names_the_solution(case, tmp_path):
    submission, solution, metadata = case
    path = tmp_path / "truth.csv"
    solution.rename(columns={"identity": "label"}).to_csv(path, index=False)
    with pytest.raises(SubmissionError) as caught:
        evaluate(submission, path, metadata)
    assert str(caught.value).startswith(f"{path}: 1 problem(s):")
    assert "solution lacks column(s) identity" in str(caught.value)


def test_cli_evaluate_reports_bad_metadata_without_a_traceback(case, tmp_path):
    from typer.testing import CliRunner

    from wildreid.cli import app

    submission, solution, metadata = case
    for frame, name in ((submission, "sub.csv"), (solution, "solution.csv")):
        frame.to_csv(tmp_path / name, index=False)
    metadata[["image_id", "species"]].to_csv(tmp_path / "meta.csv", index=False)
    result = CliRunner().invoke(app, ["evaluate", str(tmp_path / "sub.csv"),
                                      str(tmp_path / "solution.csv"), "--metadata",
                                      str(tmp_path / "meta.csv")])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "meta.csv" in result.output and "identity, split" in result.output


def test_metadata_without_the_queries_is_refused(case):
    """Database rows only: the species of the queries cannot be known; pooling them would
    silently score one made-up species."""
    submission, solution, metadata = case
    with pytest.raises(SubmissionError, match=r"(?s)metadata: 1 problem.*8 query image_id\(s\) of the "
                                              r"solution are not in it.*q1, q2"):
        evaluate(submission, solution, metadata[metadata["split"] == "database"])
    # Without species there is nothing to know: the database rows are enough, queries are pooled.
    pooled = evaluate(submission, solution,
                      metadata[metadata["split"] == "database"].drop(columns="species"))
    assert set(pooled["species"]) == {"all"} and pooled["queries"] == 8


def test_metadata_columns_in_any_letter_case(case):
    submission, solution, metadata = case
    result = evaluate(submission, solution, metadata.rename(columns=str.capitalize))
    assert set(result["species"]) == {"s1", "s2"}
    assert result["score"] == pytest.approx(0.375)


def test_repeated_rows_are_refused(case, tmp_path):
    """A query twice in the solution would count twice in its identity's share."""
    submission, solution, metadata = case
    path = tmp_path / "solution.csv"
    pd.concat([solution, solution.iloc[[2]]]).to_csv(path, index=False)
    with pytest.raises(SubmissionError) as caught:
        evaluate(submission, path, metadata)
    assert str(path) in str(caught.value) and "1 image_id(s) appear more than once: q3" in str(
        caught.value)
    with pytest.raises(SubmissionError, match=r"(?s)submission: 1 problem.*more than once: q1"):
        evaluate(pd.concat([submission, submission.iloc[[0]]]), solution, metadata)


def test_best_threshold_lies_on_a_plateau_not_between_two():
    # Two best plateaus with a valley between: the median of all maxima (2.5) would sit in it.
    valley = pd.DataFrame({"threshold": [0.0, 1.0, 2.0, 3.0, 4.0, 5.0],
                           "score": [0.5, 0.9, 0.2, 0.2, 0.9, 0.3]})
    assert best_threshold(valley) == (1.0, 0.9)
    wide = pd.DataFrame({"threshold": [0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
                         "score": [0.9, 0.2, 0.9, 0.9, 0.9, 0.2, 0.1]})
    assert best_threshold(wide) == (3.0, 0.9)  # the widest plateau's middle


def test_proposed_new_individuals_count_as_new_and_their_grouping_is_scored(case):
    submission, solution, metadata = case
    # q4, q5 are X, q6 is Y (unknown); q8 is Z. Proposed: q4 and q6 together (wrong), q5 alone.
    grouped = submission.copy()
    grouped["identity"] = ["A", NEW, "B", "new_individual_1", "A", "new_individual_1", "D", "D"]
    plain = evaluate(submission.assign(identity=np.where(
        grouped["identity"].str.startswith("new_individual"), NEW, grouped["identity"])),
        solution, metadata)
    result = evaluate(grouped, solution, metadata)
    assert result["species"] == plain["species"]  # BAKS/BAUS as for plain new_individual
    assert result["score"] == plain["score"]
    grouping = result["new_individuals"]
    # Unknown queries q4 (X), q5 (X), q6 (Y), q8 (Z); groups: {q4, q6}, q5 named A, q8 named D.
    # Pairs: true together {q4,q5}; put together {q4,q6}: TP 0, FP 1, FN 1.
    assert grouping["unknown_queries"] == 4 and grouping["unknown_individuals"] == 3
    assert grouping["pairwise_precision"] == 0 and grouping["pairwise_recall"] == 0
    assert grouping["proposed_individuals"] == 1 and grouping["proposed_with_several_photos"] == 1
    right = grouped.assign(identity=["A", NEW, "B", "new_individual_1", "new_individual_1",
                                     "new_individual_2", "D", "new_individual_3"])
    perfect = evaluate(right, solution, metadata)["new_individuals"]
    assert perfect["pairwise_f1"] == 1 and perfect["ari"] == 1
    assert "new_individuals" not in evaluate(submission, solution, metadata)
    with pytest.raises(SubmissionError, match="new_individual_x"):
        evaluate(grouped.assign(identity=["new_individual_x"] * 8), solution, metadata)
