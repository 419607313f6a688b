"""The first stages: the VLAD shortlist against a brute-force reference (photos without
keypoints, a species too poor in descriptors for a codebook, views), and the selection by
recall choosing per species what finds the individual."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from wildreid.local import Keypoints
from wildreid.scorers import Side
from wildreid.shortlist import CosineShortlist, ShortlistSelection, VladShortlist
from wildreid.vlad import Vlad

DIM = 16


def _keypoints(descriptors: np.ndarray) -> Keypoints:
    count = len(descriptors)
    return Keypoints(np.zeros((count, 2), np.float32), np.ones(count, np.float32),
                     np.asarray(descriptors, np.float32), (64, 64))


def _unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def _animals(rng, species: str, identities: int, photos: int, patterned: bool,
             prefix: str = "") -> tuple[pd.DataFrame, np.ndarray, list[Keypoints]]:
    """Photos of ``identities`` animals: global descriptors that carry nothing of the individual,
    and local descriptors drawn around the animal's own pattern (``patterned``) or anywhere."""
    rows, features, keypoints = [], [], []
    for animal in range(identities):
        pattern = rng.normal(size=(40, DIM))
        for photo in range(photos):
            drawn = (pattern[rng.choice(40, 25, replace=False)] + rng.normal(0, 0.3, (25, DIM))
                     if patterned else rng.normal(size=(25, DIM)))
            keypoints.append(_keypoints(drawn))
            features.append(rng.normal(size=8))
            rows.append({"image_id": f"{prefix}{species}-{animal}-{photo}",
                         "filepath": f"{species}/{animal}/{photo}.jpg",
                         "identity": f"{prefix}{animal}", "species": species,
                         "date": f"2024-01-{photo + 1:02d}"})
    return pd.DataFrame(rows), _unit(np.array(features)), keypoints


def _side(images, features, keypoints) -> Side:
    return Side(images.reset_index(drop=True), features, None, {"sift": keypoints})


def test_vlad_shortlist_equals_summed_cosines_by_brute_force():
    """Each query's shortlist is the gallery photos of its species ranked by global cosine plus
    ``weight`` x VLAD cosine (the species' own codebook), computed here pair by pair; a photo
    without keypoints has no VLAD part, and a species too poor in descriptors for a codebook
    is ranked by the cosine alone. Views restrict the candidates as the cosine stage's do."""
    rng = np.random.default_rng(0)
    first = _animals(rng, "a", 6, 3, patterned=True)
    second = _animals(rng, "b", 2, 2, patterned=True)
    images = pd.concat([first[0], second[0]], ignore_index=True)
    images["orientation"] = ["left", "right"] * (len(images) // 2)
    features = np.vstack([first[1], second[1]])
    keypoints = first[2] + [_keypoints(k.descriptors[:1]) for k in second[2]]  # 4 < 8 centres
    keypoints[4] = _keypoints(np.zeros((0, DIM)))  # a photo with no keypoint
    species = images["species"].to_numpy(object)
    stage = VladShortlist(clusters=8, weight=0.7).fit(_side(images, features, keypoints),
                                                      species)
    assert stage.features_ == "sift"
    assert stage.codebooks_["b"] is None and isinstance(stage.codebooks_["a"], Vlad)

    asked = [0, 4, 7, 19, 20]
    queries = Side(images.iloc[asked].drop(columns="orientation").reset_index(drop=True),
                   features[asked] + rng.normal(0, 0.05, (5, 8)).astype(np.float32), None,
                   {"sift": [keypoints[row] for row in asked]})
    views = [None, None, frozenset({"right"}), None, None]
    found = stage.search(queries, species[asked], 4, views)

    book = stage.codebooks_["a"]
    vlads = {row: book.transform([keypoints[row].descriptors])[0]
             for row in range(len(images)) if species[row] == "a"}
    for query, row in enumerate(asked):
        members = [other for other in range(len(images)) if species[other] == species[row]
                   and (views[query] is None or images["orientation"][other] in views[query])]
        summed = {other: float(queries.features[query] @ features[other])
                  + (0.7 * float(vlads[row] @ vlads[other]) if species[row] == "a" else 0.0)
                  for other in members}
        expected = sorted(summed, key=lambda other: -summed[other])[:4]
        assert found[query][:len(expected)].tolist() == expected, query
        assert (found[query][len(expected):] == -1).all()
    assert not stage.vectors_[4, 8:].any()  # no keypoint: the zero VLAD
    # One dot product is the cosine plus ``weight`` times the VLADs' cosine.
    assert stage.vectors_[0] @ stage.vectors_[3] == pytest.approx(
        features[0] @ features[3] + 0.7 * vlads[0] @ vlads[3], abs=1e-5)


def test_a_query_without_species_is_placed_by_its_cosine_alone():
    """A query without a species is compared with every gallery photo; VLADs of another
    species' codebook do not compare with its own, so its VLAD part is left out."""
    rng = np.random.default_rng(3)
    images, features, keypoints = _animals(rng, "a", 6, 3, patterned=True)
    stage = VladShortlist(clusters=8).fit(_side(images, features, keypoints),
                                          images["species"].to_numpy(object))
    queries = _side(images.iloc[:2].assign(species=None), features[:2], keypoints[:2])
    found = stage.search(queries, np.array([None, None], object), 3)
    expected = np.argsort(-(features[:2] @ features.T), axis=1, kind="stable")[:, :3]
    assert (found == expected).all()
    empty = stage.search(queries.subset([]), np.array([], object), 3)
    assert empty.shape == (0, 3)


def test_vlad_shortlist_names_the_keypoints_it_lacks():
    rng = np.random.default_rng(1)
    images, features, keypoints = _animals(rng, "a", 3, 2, patterned=True)
    with pytest.raises(ValueError, match="reads aliked keypoints, which the gallery lacks"):
        VladShortlist("aliked", clusters=4).fit(_side(images, features, keypoints),
                                                images["species"].to_numpy(object))


def test_selection_keeps_vlad_only_where_it_finds_the_individual():
    """Species ``a``'s photos carry their animal's pattern in their local descriptors and
    nothing in their global ones: the VLAD stage finds the individual far more often, beyond
    two standard errors, and is chosen. Species ``b``'s local descriptors are noise: no gain,
    the cosine is kept. Each query is then searched by its species' choice."""
    rng = np.random.default_rng(2)
    parts = [_animals(rng, "a", 24, 4, patterned=True),
             _animals(rng, "b", 24, 4, patterned=False)]
    images = pd.concat([part[0] for part in parts], ignore_index=True)
    features = np.vstack([part[1] for part in parts])
    keypoints = parts[0][2] + parts[1][2]
    species = images["species"].to_numpy(object)
    side = _side(images, features, keypoints)
    selection = ShortlistSelection(
        {"cosine": CosineShortlist(), "cosine+vlad": VladShortlist(clusters=16)},
        size=5, splits=2).fit(side, species)
    assert selection.chosen_ == {"a": "cosine+vlad", "b": "cosine"}
    measured = selection.recall_["a"]["cosine+vlad"]
    assert measured["gain"] > 2 * measured["standard_error"] > 0
    assert measured["recall"] > 0.8 > selection.recall_["a"]["cosine"]["recall"]
    assert measured["queries"] > 20

    asked = [0, 5, 100, 130]
    queries = side.subset(asked)
    found = selection.search(queries, species[asked], 5)
    vlad = selection.stages_["cosine+vlad"].search(queries.subset([0, 1]), species[asked[:2]], 5)
    cosine = selection.stages_["cosine"].search(queries.subset([2, 3]), species[asked[2:]], 5)
    assert (found[:2] == vlad).all() and (found[2:] == cosine).all()
    assert selection.search(queries.subset([]), np.array([], object), 5).shape == (0, 5)

    # Photos added (a catalog growing): the chosen stages are fitted again, the choice kept.
    grown = _side(pd.concat([images, images.iloc[:4].assign(
        image_id=lambda frame: frame["image_id"] + "-again")], ignore_index=True),
        np.vstack([features, features[:4]]), keypoints + keypoints[:4])
    chosen, recall = dict(selection.chosen_), selection.recall_
    selection.partial_fit(grown, np.concatenate([species, species[:4]]))
    assert selection.chosen_ == chosen and selection.recall_ is recall
    assert len(selection.stages_["cosine+vlad"].vectors_) == len(images) + 4
