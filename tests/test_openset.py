"""The new_individual threshold, fitted on the database alone."""

from __future__ import annotations

import numpy as np
import pytest

from wildreid.data import NEW_INDIVIDUAL
from wildreid.openset import OpenSetDecision, fit_threshold, pseudo_split


def _clusters(n_ids: int, per_id: int, spread: float, seed: int):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_ids, 32))
    rows = np.repeat(centres, per_id, axis=0) + spread * rng.normal(size=(n_ids * per_id, 32))
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
    return rows.astype(np.float32), np.repeat([f"id{i}" for i in range(n_ids)], per_id)


def test_pseudo_split_keeps_unknowns_out_of_the_reference():
    identities = np.repeat([f"id{i}" for i in range(10)], 4)
    split = pseudo_split(identities, np.random.default_rng(0))
    reference = set(identities[split.reference])
    for row, unknown in zip(split.queries, split.unknown):
        assert (identities[row] not in reference) == unknown
    assert not set(split.queries) & set(split.reference)


def test_fitted_threshold_separates_known_from_unknown():
    everything, identities = _clusters(40, 5, spread=0.35, seed=1)
    held = np.arange(len(everything)) % 5 == 4  # a fresh photo of each of the first 30
    features, fit_ids = everything[~held], identities[~held]
    fitted = np.isin(fit_ids, [f"id{i}" for i in range(30)])
    threshold, curve = fit_threshold(features[fitted], fit_ids[fitted])
    best = lambda rows: (rows @ features[fitted].T).max(axis=1)  # noqa: E731
    known_queries = everything[held][:30]
    unknown_queries = everything[held][30:]  # individuals never fitted
    assert (best(known_queries) >= threshold).mean() > 0.9
    assert (best(unknown_queries) < threshold).mean() > 0.9
    assert curve["score"].max() > 0.9


def test_decision_per_species_with_pooled_fallback():
    features, identities = _clusters(12, 3, spread=0.3, seed=0)
    species = np.where(np.arange(36) < 18, "a", "b")
    decision = OpenSetDecision.fit(features, identities, species)
    assert set(decision.thresholds) == {None, "a", "b"}
    answers = decision.decide(["id1", "id2", "id3"], [2.0, -2.0, 2.0], ["a", "b", "unseen"])
    assert list(answers) == ["id1", NEW_INDIVIDUAL, "id3"]


def test_too_few_identities():
    features, identities = _clusters(2, 3, spread=0.3, seed=0)
    with pytest.raises(ValueError, match="give --threshold"):
        OpenSetDecision.fit(features, identities)


def test_thresholds_from_any_scorers_pseudo_queries():
    """The one door both the cosine and the fused local scores fit thresholds through: each
    species its own where it has known and unknown pseudo-queries, the pooled one otherwise."""
    truth = np.array(["a", "a", "b", "x", "y", "c", "c", "z"], dtype=object)
    top = np.array(["a", "a", "b", "a", "b", "c", "c", "c"], dtype=object)
    score = np.array([0.9, 0.8, 0.85, 0.3, 0.2, 0.7, 0.6, 0.65])
    unknown = np.isin(truth, ["x", "y", "z"])
    species = np.array(["lion"] * 5 + ["nyala"] * 3, dtype=object)
    decision = OpenSetDecision.from_pseudo_queries(truth, top, score, unknown, species)
    assert set(decision.thresholds) == {None, "lion", "nyala"}
    # Lions: every known pseudo-query scores above every unknown one, so the cut lies between.
    assert 0.3 < decision.thresholds["lion"] <= 0.8
    # Nyala: the unknown (0.65) sits between the known ones; the best cut keeps one of two.
    assert decision.thresholds["nyala"] > 0.6
    only_known = OpenSetDecision.from_pseudo_queries(truth, top, score, unknown,
                                                     np.where(unknown, "lion", "zebra"))
    assert set(only_known.thresholds) == {None}  # neither species has both kinds
    with pytest.raises(ValueError, match="give --threshold"):
        OpenSetDecision.from_pseudo_queries(truth[~unknown], top[~unknown], score[~unknown],
                                            unknown[~unknown])
