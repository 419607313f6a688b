"""The new_individual threshold, fitted on the database alone."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from wildreid.data import NEW_INDIVIDUAL
from wildreid.metrics import best_threshold, threshold_curve
from wildreid.openset import (
    OpenSetDecision,
    bagged_threshold,
    fit_threshold,
    pseudo_query_threshold,
)
from wildreid.pseudo_queries import pseudo_split, sightings_of
from wildreid.ranking import IdentityIndex


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


@pytest.mark.slow
def test_bagged_threshold_is_steadier_than_one_fit():
    """The threshold fitted on pseudo-queries is the mean over resamples of their identities: on
    worlds drawn alike (known individuals' best scores above unknown ones', overlapping), it
    moves less from one draw of pseudo-queries to the next than the plain fit, stays between
    the two kinds of score, and is the same for the same pseudo-queries."""
    plain, bagged = [], []
    for seed in range(20):
        rng = np.random.default_rng(seed)
        truth = np.repeat([f"k{i}" for i in range(30)] + [f"u{i}" for i in range(30)], 3)
        unknown = truth.astype(str).astype("U1") == "u"
        top = np.where(unknown, "k0", truth)
        score = np.where(unknown, rng.normal(0.4, 0.15, len(truth)),
                         rng.normal(0.6, 0.15, len(truth)))
        plain.append(pseudo_query_threshold(truth, top, score, unknown)[0])
        bagged.append(bagged_threshold(truth, top, score, unknown))
        assert bagged_threshold(truth, top, score, unknown) == bagged[-1]
    assert 0.4 < np.mean(bagged) < 0.6
    assert np.std(bagged) < 0.85 * np.std(plain)  # 0.78 on these worlds
    # Three identities: resamples of one kind alone are passed over; still between the kinds.
    truth = np.array(["a", "a", "x", "y"], dtype=object)
    top = np.array(["a", "a", "a", "a"], dtype=object)
    score, unknown = np.array([0.9, 0.8, 0.3, 0.2]), np.array([False, False, True, True])
    assert 0.3 < bagged_threshold(truth, top, score, unknown, draws=3, seed=1) <= 0.8


@pytest.mark.slow
def test_cosine_threshold_is_bagged_and_steadier_than_its_pooled_curve():
    """The fast preset's threshold follows the same rule as local re-ranking's: over draws of
    pseudo-splits of one database (overlapping identities), the bagged threshold moves less
    than the best of the pooled curve it returns (0.45 to 0.60 as much on these worlds), and
    lands near it."""
    for world in range(3):
        features, identities = _clusters(40, 4, spread=0.6, seed=world)
        bagged, pooled_best = [], []
        for seed in range(15):
            threshold, curve = fit_threshold(features, identities, seed=seed)
            bagged.append(threshold)
            pooled_best.append(best_threshold(curve)[0])
        assert np.std(bagged) < 0.75 * np.std(pooled_best)
        assert abs(np.mean(bagged) - np.mean(pooled_best)) < 0.05


def _sightings_world(seed: int, identities: int = 40, sightings: int = 4, per_sighting: int = 2,
                     between: float = 1.3, within: float = 0.05):
    """Photos of one sighting nearly alike (same place and light), sightings of one individual
    far apart: unit features, identities and each photo's date (one day per sighting)."""
    rng = np.random.default_rng(seed)
    features, names, dates = [], [], []
    for individual in range(identities):
        centre = rng.normal(size=32)
        for sighting in range(sightings):
            seen = centre + between * rng.normal(size=32)
            for photo in range(per_sighting):  # photos of one sighting minutes apart
                features.append(seen + within * rng.normal(size=32))
                names.append(f"id{individual}")
                dates.append(f"2024-01-0{sighting + 1} 0{sighting}:{10 * photo + 5:02d}")
    features = np.array(features, np.float32)
    features /= np.linalg.norm(features, axis=1, keepdims=True)
    return features, np.array(names), np.array(dates, dtype=object)


def test_sightings_of_reads_days_and_gives_undated_photos_their_own():
    images = pd.DataFrame({"date": ["2024-01-02 10:00", "2024-01-02 17:45", None, "spring",
                                    "", np.nan]})
    assert list(sightings_of(images)) == ["2024-01-02", "2024-01-02", "row 2", "spring", "row 4",
                                          "row 5"]
    assert sightings_of(pd.DataFrame({"date": [None, " "]})) is None
    # Each date read alone, in its own zone (a file may cross a change to summer time); numbers
    # as text; placeholders for "no date" are no date.
    # EXIF's colons; other orders read by pandas, warnings kept quiet.
    odd = pd.DataFrame({"date": ["2024-03-30T23:30+01:00", "2024-03-31T10:00+02:00", 20240102,
                                 "NA", "unknown", pd.Timestamp("2024-05-01 23:00"),
                                 "2024:05:01 10:00:00", "13/02/2024"]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        found = list(sightings_of(odd))
    assert found == ["2024-03-30", "2024-03-31", "2024-01-02", "row 3", "row 4", "2024-05-01",
                     "2024-05-01", "2024-02-13"]
    assert sightings_of(pd.DataFrame({"identity": ["a"]})) is None


def test_pseudo_split_holds_out_whole_sightings():
    _, identities, dates = _sightings_world(0, identities=12)
    dates[identities == "id0"] = "2024-02-01"  # id0 was seen once
    sightings = sightings_of(pd.DataFrame({"date": dates}))
    known_queries_of_id0 = 0
    for seed in range(20):
        split = pseudo_split(identities, np.random.default_rng(seed), sightings=sightings)
        reference = set(zip(identities[split.reference], sightings[split.reference]))
        known = split.queries[~split.unknown]
        assert len(known)
        for row in known:  # a pseudo-known query never meets a photo of its own sighting...
            assert (identities[row], sightings[row]) not in reference
            # ...but always meets its individual
            assert identities[row] in set(identities[split.reference])
        known_queries_of_id0 += int((identities[known] == "id0").sum())
    assert known_queries_of_id0 == 0  # seen once: a pseudo-unknown or all in the reference


def test_pseudo_split_falls_back_to_photos_when_few_identities_were_seen_twice():
    identities = np.repeat([f"id{i}" for i in range(10)], 3)
    sightings = np.repeat([f"day{i}" for i in range(10)], 3).astype(object)
    sightings[:2] = "day-before"  # id0 seen twice: at most one pseudo-known query by sightings
    for seed in range(5):
        split = pseudo_split(identities, np.random.default_rng(seed), sightings=sightings)
        assert (~split.unknown).sum() >= 5  # held out photo by photo instead


def test_undated_identities_are_cut_as_before():
    """Photos that are each their own sighting (no dates) are cut with the same random draws as
    without sightings: the same split."""
    identities = np.repeat([f"id{i}" for i in range(12)], 4)
    undated = np.array([f"row {row}" for row in range(len(identities))], dtype=object)
    for seed in range(3):
        with_rows = pseudo_split(identities, np.random.default_rng(seed), sightings=undated)
        without = pseudo_split(identities, np.random.default_rng(seed))
        assert (with_rows.queries == without.queries).all()
        assert (with_rows.reference == without.reference).all()


@pytest.mark.slow
def test_threshold_fitted_by_sightings_suits_queries_of_new_sightings():
    """The hard case: photos of one sighting are near duplicates. Held out photo by photo, a
    pseudo-known query meets its twin and scores high, so the threshold is fitted too high and
    real queries (a new sighting of a known individual) are called new. Held out by sighting,
    the pseudo-queries look like the queries: over ten worlds the threshold is lower in each
    (40 of 40 seeds tried) and the open-set score of the queries higher on average (by 0.14
    over 40 seeds; one world alone is noisy, 30 individuals)."""
    scores = {"photos": [], "sightings": []}
    thresholds = {"photos": [], "sightings": []}
    for seed in range(10):
        features, identities, dates = _sightings_world(seed)
        number = np.array([int(name[2:]) for name in identities])
        last = np.array([date.startswith("2024-01-04") for date in dates])
        database = (number < 30) & ~last
        queries = ((number < 30) & last) | (number >= 30)  # new sightings, new individuals
        names, best = IdentityIndex(features[database], identities[database]).search(
            features[queries], k=1)
        sightings = sightings_of(pd.DataFrame({"date": dates[database]}))
        for how, given in (("photos", None), ("sightings", sightings)):
            threshold, _ = fit_threshold(features[database], identities[database],
                                         sightings=given)
            curve = threshold_curve(identities[queries], names[:, 0], best[:, 0],
                                    number[queries] >= 30, thresholds=np.array([threshold]))
            scores[how].append(curve["score"].iloc[0])
            thresholds[how].append(threshold)
    assert (np.array(thresholds["sightings"]) < np.array(thresholds["photos"])).all()
    assert np.mean(scores["sightings"]) > np.mean(scores["photos"]) + 0.05
