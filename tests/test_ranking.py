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


def _clustered(count: int, identities: int, dim: int = 32, seed: int = 0, spread: float = 0.2):
    """Embeddings like a descriptor's: each identity a direction, its images spread around it
    (cosine about 0.75 to the direction with the default spread)."""
    rng = np.random.default_rng(seed)
    centres = _unit(rng.normal(size=(identities, dim)).astype(np.float32))
    owners = rng.integers(0, identities, count)
    features = _unit(centres[owners] + spread * rng.normal(size=(count, dim)).astype(np.float32))
    queries = _unit(centres[rng.integers(0, identities, 200)]
                    + spread * rng.normal(size=(200, dim)).astype(np.float32))
    return features, np.array([f"id{o}" for o in owners]), queries


def test_approximate_search_of_a_large_species_agrees_with_exact(monkeypatch):
    features, identities, queries = _clustered(6000, 400)
    species = np.where(np.arange(6000) % 3 == 0, "small", "large")  # 2000 and 4000 images
    query_species = np.where(np.arange(200) % 4 == 0, "small", "large")
    exact = IdentityIndex(features, identities, species).search(queries, query_species, k=5)
    monkeypatch.setattr(ranking, "APPROXIMATE_ABOVE", 3000)  # only "large" goes approximate
    index = IdentityIndex(features, identities, species)
    names, scores = index.search(queries, query_species, k=5)
    assert index._galleries["large"].index is not None and index._galleries["small"].index is None
    small = query_species == "small"
    assert (names[small] == exact[0][small]).all()  # exact where it should be
    same = names[:, 0] == exact[0][:, 0]
    assert same.mean() >= 0.95
    np.testing.assert_allclose(scores[same, 0], exact[1][same, 0], atol=1e-5)  # exact cosines
    assert (np.diff(scores, axis=1) <= 1e-6).all()  # best first


def test_approximate_shortlist_recall_padding_and_reuse(monkeypatch):
    features, _, queries = _clustered(5000, 300)
    exact, _ = ranking.nearest_images(features, None, queries, None, 100)
    monkeypatch.setattr(ranking, "APPROXIMATE_ABOVE", 1000)
    kept: dict = {}
    found, cosines = ranking.nearest_images(features, None, queries, None, 100, kept)
    recall = np.mean([len(set(a) & set(e)) / 100 for a, e in zip(found, exact)])
    assert recall >= 0.9, recall
    assert (found >= -1).all() and (np.diff(cosines, axis=1) <= 1e-6).all()
    index = kept[None]
    ranking.nearest_images(features, None, queries[:3], None, 100, kept)
    assert kept[None] is index  # built once per database
    few, few_cosines = ranking.nearest_images(features, None, queries[:5], None, 4990, kept)
    assert ((few == -1) == np.isinf(few_cosines)).all()  # probed cells hold fewer: -1 pads


def test_the_best_image_of_each_candidate_is_the_most_similar_of_its_identity(gallery,
                                                                              monkeypatch):
    features, identities, species, queries = gallery
    index = IdentityIndex(features, identities, species)
    names, scores, rows = index.search(queries, ["a"] * len(queries), k=4, images=True)
    similarity = queries @ features.T
    for query in range(len(queries)):
        for name, score, row in zip(names[query], scores[query], rows[query]):
            members = np.flatnonzero((identities == name) & (species == "a"))
            assert row == members[np.argmax(similarity[query, members])]
            assert identities[row] == name and similarity[query, row] == pytest.approx(score)
    # The approximate index gives the same images (a tiny threshold forces it here).
    monkeypatch.setattr(ranking, "APPROXIMATE_ABOVE", 10)
    approximate = IdentityIndex(features, identities, species).search(
        queries, ["a"] * len(queries), k=4, images=True)
    assert (approximate[2][:, 0] == rows[:, 0]).all()


def test_the_approximate_index_is_kept_beside_the_cache_and_grows(tmp_path, monkeypatch):
    """A large species' index is built once and saved; the same database reads it back (same
    answers); a database grown by appending extends it instead of building another; a damaged
    file is built again."""
    features, identities, queries = _clustered(6000, 300)
    monkeypatch.setattr(ranking, "APPROXIMATE_ABOVE", 1000)
    folder = ranking.index_dir(tmp_path / "cache")
    exact = IdentityIndex(features, identities).search(queries, k=5)

    def search(count: int):
        index = IdentityIndex(features[:count], identities[:count], index_dir=folder)
        found = index.search(queries, k=5, images=True)
        return found, index._galleries[None].index_origin, sorted(folder.rglob("*.faiss"))

    first, origin, files = search(5000)
    assert origin == "built" and [f.name.split("-")[1:3] for f in files] == [["5000", "5000"]]
    again, origin, _ = search(5000)
    assert origin == "loaded"
    for built, loaded in zip(first, again):
        np.testing.assert_array_equal(built, loaded)
    grown, origin, files = search(6000)  # 1,000 photos appended
    assert origin == "extended" and [f.name.split("-")[1:3] for f in files] == [["6000", "5000"]]
    assert (grown[0][:, 0] == exact[0][:, 0]).mean() >= 0.95
    # The best image of each identity is a database row of that identity, the new rows included.
    assert (identities[grown[2][:, 0]] == grown[0][:, 0]).all()
    files[0].write_bytes(files[0].read_bytes()[:1000])  # damaged: truncated
    rebuilt, origin, _ = search(6000)
    assert origin == "built" and (rebuilt[0][:, 0] == exact[0][:, 0]).mean() >= 0.95
    # Each gallery keeps its own: a species whose rows begin the pooled gallery's never hands
    # its index over to it (nor is a species name ever a file name).
    species = np.array(["a/../b"] * 6000, dtype=object)
    index = IdentityIndex(features, identities, species, index_dir=folder)
    index.search(queries, ["a/../b"] * len(queries), k=5)
    index.search(queries, None, k=5)
    assert index._galleries["a/../b"].index_origin == "built"
    assert index._galleries[None].index_origin == "loaded"  # the pooled one, from above
    assert sorted(p.name.split("-")[0] for p in folder.iterdir()) == ["all", "species"]
