"""Identity ranking: exact against brute force, chunked, restricted to the query's species."""

from __future__ import annotations

import numpy as np
import pytest

from wildreid import ranking
from wildreid.ranking import IdentityIndex


def _unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


@pytest.fixture()
def gallery():
    rng = np.random.default_rng(0)
    features = _unit(rng.normal(size=(60, 16)).astype(np.float32))
    identities = np.array([f"id{i % 12}" for i in range(60)])
    species = np.where(np.arange(60) % 12 < 6, "a", "b")
    queries = _unit(rng.normal(size=(25, 16)).astype(np.float32))
    return features, identities, species, queries


@pytest.mark.parametrize("aggregation", ["max", "mean"])
def test_matches_brute_force_in_small_chunks(gallery, aggregation, monkeypatch):
    features, identities, _, queries = gallery
    monkeypatch.setattr(ranking, "_CHUNK_ELEMENTS", 100)  # forces 1-query chunks
    names, scores = IdentityIndex(features, identities, aggregation=aggregation).search(queries, k=3)
    similarity = queries @ features.T
    reduce = np.max if aggregation == "max" else np.mean
    for q in range(len(queries)):
        per_id = {i: reduce(similarity[q, identities == i]) for i in set(identities)}
        expected = sorted(per_id, key=per_id.get, reverse=True)[:3]
        assert list(names[q]) == expected
        np.testing.assert_allclose(scores[q], [per_id[i] for i in expected], rtol=1e-5)


def test_queries_only_see_their_species(gallery):
    features, identities, species, queries = gallery
    index = IdentityIndex(features, identities, species)
    query_species = ["a"] * 10 + ["b"] * 10 + [None] * 5
    names, _ = index.search(queries, query_species, k=6)
    allowed_a = set(identities[species == "a"])
    assert all(set(row) <= allowed_a for row in names[:10])
    assert all(not set(row) & allowed_a for row in names[10:20])
    whole, _ = IdentityIndex(features, identities).search(queries[20:], k=6)
    np.testing.assert_array_equal(names[20:], whole)  # blank species: the whole database


def test_short_lists_are_padded(gallery):
    features, identities, species, queries = gallery
    names, scores = IdentityIndex(features, identities, species).search(queries[:2], ["a", "a"], k=9)
    assert list(names[0, 6:]) == ["", "", ""] and np.isneginf(scores[0, 6:]).all()


def test_unknown_species_is_an_error(gallery):
    features, identities, species, queries = gallery
    with pytest.raises(ValueError, match="species 'zebra' has no database images"):
        IdentityIndex(features, identities, species).search(queries[:1], ["zebra"])
