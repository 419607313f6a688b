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
