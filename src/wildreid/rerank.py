"""Re-rank a global shortlist with local keypoint matches, calibrated and fused (WildFusion).

``fit`` on the database: keypoints of every database image (on the animal when a region is
known), then a bounded sample of database-vs-database pairs — pseudo-queries against their
shortlist in a pseudo-database, as in :mod:`wildreid.openset` — fits one isotonic calibration per
matcher (the global cosine is a matcher too) and the per-species ``new_individual`` thresholds on
cross-fitted fused scores (each pair calibrated without its pseudo-query's identity). ``rank``
scores each query's shortlist and aggregates per identity (max).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator

from wildreid.distributed import RayPool
from wildreid.fusion import Calibration, cross_fitted_fusion
from wildreid.isolation import Isolator, Region, by_species
from wildreid.local import KeypointExtractor, Keypoints, create_local_features
from wildreid.matching import PAIR_SCORES, PairScorer, create_matcher, score_pairs
from wildreid.openset import OpenSetDecision, pseudo_split, species_keys
from wildreid.ranking import index_dir, nearest_images

#: Which pairs are also matched with the query image mirrored (the pair keeps the better score).
MIRROR_MODES = ("none", "opposite", "all")
#: Where local keypoints are kept: on the animal's mask, or anywhere on the photo; ``auto``
#: chooses one of the two per species on the database (:meth:`LocalReranking.fit`).
KEYPOINT_PLACES = ("animal", "image", "auto")
#: Pseudo-queries per species that choose between the places of ``keypoints_on="auto"``.
_CHOICE_QUERIES = 100


def keypoint_regions(images: pd.DataFrame, keypoints_on: str | dict[str | None, str],
                     isolator: Isolator | None, description: str = "regions"
                     ) -> list[Region | None] | None:
    """The region each image's keypoints are kept in: the animal's (segmented or from metadata)
    for species whose ``keypoints_on`` is ``animal``, ``None`` (the whole photo) for the rest;
    ``None`` when no image keeps them on the animal."""
    species = images["species"] if "species" in images.columns else [None] * len(images)
    on_animal = by_species(keypoints_on, species, "animal") == "animal"
    if isolator is None or not on_animal.any():
        return None
    found = isolator(images.iloc[np.flatnonzero(on_animal)], description)
    regions: list[Region | None] = [None] * len(images)
    for row, region in zip(np.flatnonzero(on_animal), found):
        regions[row] = region
    return regions


class _MirroredQueries(NamedTuple):
    """Keypoints of mirrored query images (each once), the pairs also matched mirrored, where
    each of those pairs finds its query among the keypoints, and the column holding queries."""

    keypoints: dict[str, list[Keypoints]]
    flipped: np.ndarray
    positions: np.ndarray
    column: int


def mirror_views(first: Sequence, second: Sequence) -> np.ndarray:
    """Pairs of ``orientation`` values that are mirror views: ``left``/``right``,
    ``left_ear``/``right_ear``... (missing orientations never are)."""
    def swapped(value) -> str | None:
        if not isinstance(value, str) or not ("left" in value or "right" in value):
            return None
        return value.replace("left", "\0").replace("right", "left").replace("\0", "right")

    mirror_of = {value: swapped(value) for value in set(first)}  # few distinct orientations
    return np.array([mirror_of[a] is not None and mirror_of[a] == b
                     for a, b in zip(first, second)], dtype=bool)


class LocalReranking(BaseEstimator):
    """Shortlist of ``shortlist`` database images per query by global cosine (``None``: every
    database image of the query's species), re-scored by local matchers (``features``:
    ``aliked``, ``disk``, ``sift``), calibrated and fused.

    ``keypoints_on``: ``animal`` keeps keypoints inside the animal's mask (regions from metadata or
    the segmenter, whole image where the guard falls back), ``image`` uses the whole photo; a dict
    gives it per species (key ``None``: the rest); ``auto`` chooses per species, on pseudo-queries
    of the database, the place whose matches name more of them right (``keypoints_on_`` after
    ``fit``; ``keypoint_choice_`` holds the top-1 of each place).
    ``calibration_queries``: pseudo-queries per species used to fit calibration and thresholds
    (the pair sample stays ``calibration_queries x shortlist`` whatever the database size).
    ``mirror``: also match the query flipped left-right, for pairs whose ``orientation`` values
    are mirror views (``opposite``, e.g. a left flank against a right flank) or for every pair
    (``all``, when the orientation is unknown); each pair keeps its better score.
    """

    def __init__(self, features: Sequence[str] = ("aliked",), shortlist: int | None = 100,
                 max_keypoints: int = 512, long_side: int = 512,
                 keypoints_on: str | dict[str | None, str] = "auto",
                 pair_score: str = "confidence_sum", calibration_queries: int = 300,
                 device: str = "auto", batch_size: int = 128, cache_dir: str | Path | None = None,
                 workers: int | None = None, progress: bool = True, seed: int = 0,
                 keep_pair_scores: bool = False, mirror: str = "none", ray: str | None = None):
        self.features = features
        self.shortlist = shortlist
        self.max_keypoints = max_keypoints
        self.long_side = long_side
        self.keypoints_on = keypoints_on
        self.pair_score = pair_score
        self.calibration_queries = calibration_queries
        self.device = device
        self.batch_size = batch_size
        self.cache_dir = cache_dir
        self.workers = workers
        self.progress = progress
        self.seed = seed
        # For studies of calibration and fusion: every pair score of every matcher, by stage.
        self.keep_pair_scores = keep_pair_scores
        self.mirror = mirror
        self.ray = ray

    def _build(self) -> None:
        """Check the parameters and build the components: keypoint extractors and matchers."""
        places = (self.keypoints_on.values() if isinstance(self.keypoints_on, dict)
                  else [self.keypoints_on])
        if any(place not in KEYPOINT_PLACES for place in places):
            raise ValueError(f"keypoints_on must be one of {', '.join(KEYPOINT_PLACES)} (or a "
                             f"dict of them by species), not {self.keypoints_on!r}")
        if self.mirror not in MIRROR_MODES:
            raise ValueError(f"mirror must be one of {', '.join(MIRROR_MODES)}, not "
                             f"{self.mirror!r}")
        self.pool_ = None if self.ray is None else RayPool(self.ray)
        self.extractors_ = {name: KeypointExtractor(
            create_local_features(name, max_keypoints=self.max_keypoints,
                                  long_side=self.long_side, device=self.device),
            self.cache_dir, self.workers, self.progress, self.pool_) for name in self.features}
        self.matchers_ = {name: create_matcher(name, device=self.device,
                                               batch_size=self.batch_size)
                          for name in self.features}
        self.pairs_per_second_: dict[str, float] = {}
        self.pair_tables_: dict[str, pd.DataFrame] = {}

    def keypoints(self, images: pd.DataFrame, regions: Sequence[Region] | None,
                  description: str, mirrored: bool = False) -> dict[str, list[Keypoints]]:
        paths = images["filepath" if "filepath" in images.columns else "path"].astype(str).tolist()
        if mirrored:
            description = f"{description} mirrored"
        return {name: extractor(paths, regions, f"{description}: {name} keypoints", mirrored)
                for name, extractor in self.extractors_.items()}

    def _mirrored(self, query_orientation: Sequence, database_orientation: Sequence
                  ) -> np.ndarray:
        """Which pairs are also matched with the query mirrored."""
        if self.mirror == "all":
            return np.ones(len(query_orientation), bool)
        if self.mirror == "opposite":
            return mirror_views(query_orientation, database_orientation)
        return np.zeros(len(query_orientation), bool)

    def _mirrored_queries(self, images: pd.DataFrame, regions: Sequence[Region] | None,
                          pairs: np.ndarray, flipped: np.ndarray, column: int, description: str
                          ) -> _MirroredQueries | None:
        if not flipped.any():
            return None
        unique, positions = np.unique(pairs[flipped, column], return_inverse=True)
        found = self.keypoints(images.iloc[unique],
                               None if regions is None else [regions[i] for i in unique],
                               description, mirrored=True)
        return _MirroredQueries(found, flipped, positions, column)

    def _pair_scores(self, keypoints: dict[str, list[Keypoints]], pairs: np.ndarray,
                     cosines: np.ndarray, description: str,
                     mirrored: _MirroredQueries | None = None) -> dict[str, np.ndarray]:
        """Every matcher's score of each pair (rows index ``keypoints``), plus the cosine.

        ``mirrored`` (from :meth:`_mirrored_queries`): the pairs also matched with their query
        mirrored; those keep the better of both scores."""
        scores = {"cosine": cosines.astype(np.float32)}
        table = {"first": pairs[:, 0], "second": pairs[:, 1], "cosine": scores["cosine"]}
        ransac = self.pair_score == "inliers" or self.keep_pair_scores
        flipped = np.zeros(len(pairs), bool) if mirrored is None else mirrored.flipped
        for name, matcher in self.matchers_.items():
            every, scored = keypoints[name], pairs
            if flipped.any():  # mirrored queries appended after the other keypoints
                every = every + mirrored.keypoints[name]
                extra = pairs[flipped].copy()
                extra[:, mirrored.column] = len(keypoints[name]) + mirrored.positions
                scored = np.concatenate([pairs, extra])
            found = score_pairs(matcher, every, scored, ransac=ransac,
                                progress=self.progress, description=f"{description}: {name}",
                                pool=self.pool_,
                                scorer=functools.partial(PairScorer, name, self.batch_size))
            self.pairs_per_second_[name] = len(scored) / max(float(found["seconds"]), 1e-9)
            for key in PAIR_SCORES:
                table[f"{name}:{key}"] = found[key][:len(pairs)]
                if flipped.any():  # NaN where the pair was not matched mirrored
                    table[f"{name}:mirrored:{key}"] = np.full(len(pairs), np.nan, np.float32)
                    table[f"{name}:mirrored:{key}"][flipped] = found[key][len(pairs):]
            scores[name] = np.fmax(table[f"{name}:{self.pair_score}"],
                                   table.get(f"{name}:mirrored:{self.pair_score}", np.nan))
        if self.keep_pair_scores:
            self.pair_tables_[description] = pd.DataFrame(table)
        return scores

    def fit(self, images: pd.DataFrame, features: np.ndarray, isolator: Isolator | None
            ) -> LocalReranking:
        self._build()
        identities = images["identity"].astype(str).to_numpy()
        species = species_keys(images.get("species"), len(images))
        rng = np.random.default_rng(self.seed)
        split = pseudo_split(identities, rng)
        if split is None:
            raise ValueError("local re-ranking needs 3 or more database identities to calibrate")
        self.keypoints_on_ = self._choose_places(images, features, species, split, isolator, rng)
        regions = keypoint_regions(images, self.keypoints_on_, isolator, "database: regions")
        self.database_keypoints_ = self.keypoints(images, regions, "database")
        self.database_features_ = features
        self.shortlist_indexes_: dict = {}  # approximate indexes of very large species, by species
        self.database_identities_ = identities
        self.database_species_ = species
        self.database_orientations_ = _orientations(images)
        queries, unknown = self._bounded(split.queries, split.unknown, species, rng)
        reference = split.reference
        shortlist, cosines = nearest_images(features[reference], species[reference],
                                            features[queries], species[queries],
                                            self.shortlist or len(reference))
        rows, columns = np.nonzero(shortlist >= 0)
        pairs = np.stack([queries[rows], reference[shortlist[rows, columns]]], 1)
        orientation = self.database_orientations_
        flipped = self._mirrored(orientation[pairs[:, 0]], orientation[pairs[:, 1]])
        mirrored = self._mirrored_queries(images, regions, pairs, flipped, 0, "pseudo-queries")
        scores = self._pair_scores(self.database_keypoints_, pairs, cosines[rows, columns],
                                   "calibration pairs", mirrored)
        same = identities[pairs[:, 0]] == identities[pairs[:, 1]]
        self.calibration_ = Calibration.fit(scores, same)
        # Thresholds from out-of-fold fused scores (folds by pseudo-query identity): fitted on
        # in-sample ones they would sit where the calibration memorised the labels.
        fused = cross_fitted_fusion(scores, same, identities[pairs[:, 0]], seed=self.seed)
        table = pd.DataFrame({"query": rows, "identity": identities[pairs[:, 1]],
                              "score": fused, "cosine": scores["cosine"]})
        top = _top_identities(table, len(queries), 1)
        self.decision_ = OpenSetDecision.from_pseudo_queries(
            identities[queries], top["identity"][:, 0], top["score"][:, 0], unknown,
            species[queries])
        self.calibration_pairs_ = len(pairs)
        return self

    def _choose_places(self, images: pd.DataFrame, features: np.ndarray, species: np.ndarray,
                       split, isolator: Isolator | None, rng) -> dict[str | None, str]:
        """``keypoints_on`` with every ``auto`` resolved per species: up to 100 pseudo-known
        queries of the species against their shortlist, matched with keypoints on the animal
        and on the whole photo; the place whose raw pair scores name more of them right wins
        (the animal on a tie, and wherever no region can be had)."""
        setting = (dict(self.keypoints_on) if isinstance(self.keypoints_on, dict)
                   else {None: self.keypoints_on})
        resolved = {key: ("animal" if value == "auto" else value) for key, value in setting.items()}
        resolved.setdefault(None, "animal")
        self.keypoint_choice_: dict[str | None, dict[str, float]] = {}
        identities = images["identity"].astype(str).to_numpy()
        for name in dict.fromkeys(species):
            if by_species(setting, [name], "animal")[0] != "auto" or isolator is None:
                continue
            known = split.queries[~split.unknown]
            queries = known[species[known] == name]
            reference = split.reference[species[split.reference] == name]
            if len(queries) == 0 or len(reference) == 0:
                continue
            if len(queries) > _CHOICE_QUERIES:
                queries = np.sort(rng.choice(queries, _CHOICE_QUERIES, replace=False))
            shortlist, cosines = nearest_images(features[reference], None, features[queries],
                                                None, self.shortlist or len(reference))
            rows, columns = np.nonzero(shortlist >= 0)
            members = np.concatenate([queries, reference])  # local rows: queries, then reference
            pairs = np.stack([rows, len(queries) + shortlist[rows, columns]], 1)
            subset = images.iloc[members]
            top1 = {}
            for place in ("animal", "image"):
                regions = keypoint_regions(subset, place, isolator, f"{name}: regions")
                found = self.keypoints(subset, regions, f"{name}: choosing keypoints ({place})")
                scores = self._pair_scores(found, pairs, cosines[rows, columns],
                                           f"{name}: keypoints on the {place}")
                hits = []
                for matcher in self.matchers_:
                    table = pd.DataFrame({"query": rows, "identity": identities[members][
                        pairs[:, 1]], "score": scores[matcher], "cosine": scores["cosine"]})
                    best = _top_identities(table, len(queries), 1)["identity"][:, 0]
                    hits.append(np.mean(best == identities[queries]))
                top1[place] = float(np.mean(hits))
            self.keypoint_choice_[name] = top1
            resolved[name] = "image" if top1["image"] > top1["animal"] else "animal"
        return resolved

    def _bounded(self, queries: np.ndarray, unknown: np.ndarray, species: np.ndarray, rng
                 ) -> tuple[np.ndarray, np.ndarray]:
        keep = []
        for name in dict.fromkeys(species[queries]):
            members = np.flatnonzero(species[queries] == name)
            if len(members) > self.calibration_queries:
                members = rng.choice(members, self.calibration_queries, replace=False)
            keep.extend(members)
        keep = np.sort(np.array(keep, dtype=np.int64))
        return queries[keep], unknown[keep]

    def rank(self, images: pd.DataFrame, features: np.ndarray, isolator: Isolator | None,
             k: int = 5) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` identities and fused scores per query (``""``/-inf pad), and the database
        row of the pair that gave each identity its score (-1 pads)."""
        species = species_keys(images.get("species"), len(images))
        regions = keypoint_regions(images, self.keypoints_on_, isolator, "queries: regions")
        query_keypoints = self.keypoints(images, regions, "queries")
        shortlist, cosines = nearest_images(self.database_features_, self.database_species_,
                                            features, species,
                                            self.shortlist or len(self.database_features_),
                                            self.shortlist_indexes_, index_dir(self.cache_dir))
        rows, columns = np.nonzero(shortlist >= 0)
        # (query, database), the direction of the calibration pairs: one-sided scores (SIFT's
        # ratio test) would otherwise be calibrated on another function than they are used as.
        pairs = np.stack([rows, shortlist[rows, columns]], 1)
        offset = len(query_keypoints[next(iter(self.extractors_))])
        joined = {name: query_keypoints[name] + self.database_keypoints_[name]
                  for name in self.features}
        flipped = self._mirrored(_orientations(images)[pairs[:, 0]],
                                 self.database_orientations_[pairs[:, 1]])
        mirrored = self._mirrored_queries(images, regions, pairs, flipped, 0, "queries")
        scores = self._pair_scores(joined, pairs + np.array([0, offset]), cosines[rows, columns],
                                   "query pairs", mirrored)
        table = pd.DataFrame({"query": rows, "identity": self.database_identities_[pairs[:, 1]],
                              "score": self.calibration_.fuse(scores), "cosine": scores["cosine"],
                              "image": pairs[:, 1]})
        top = _top_identities(table, len(images), k)
        return top["identity"], top["score"], top["image"]


    def similarity(self, images: pd.DataFrame, features: np.ndarray, isolator: Isolator | None,
                   neighbours: int = 10, description: str = "new individuals") -> np.ndarray:
        """The fused score of every two of ``images`` (one species), as candidates are ranked:
        each image is matched with its ``neighbours`` most similar others by cosine, both ways
        scored once (lower row first) and fused; pairs never matched score 0."""
        count = len(images)
        similarity = np.zeros((count, count), np.float32)
        np.fill_diagonal(similarity, 1.0)
        if count < 2:
            return similarity
        cosines = np.asarray(features, np.float32) @ np.asarray(features, np.float32).T
        ranked = cosines.copy()
        np.fill_diagonal(ranked, -np.inf)
        width = min(neighbours, count - 1)
        nearest = np.argpartition(-ranked, width - 1, axis=1)[:, :width]
        pairs = np.sort(np.stack([np.repeat(np.arange(count), width), nearest.ravel()], 1), axis=1)
        pairs = np.unique(pairs, axis=0)
        regions = keypoint_regions(images, self.keypoints_on_, isolator, f"{description}: regions")
        keypoints = self.keypoints(images, regions, description)
        orientation = _orientations(images)
        flipped = self._mirrored(orientation[pairs[:, 0]], orientation[pairs[:, 1]])
        mirrored = self._mirrored_queries(images, regions, pairs, flipped, 0, description)
        scores = self._pair_scores(keypoints, pairs, cosines[pairs[:, 0], pairs[:, 1]],
                                   f"{description} pairs", mirrored)
        fused = self.calibration_.fuse(scores)
        similarity[pairs[:, 0], pairs[:, 1]] = fused
        similarity[pairs[:, 1], pairs[:, 0]] = fused
        return similarity


def _orientations(images: pd.DataFrame) -> np.ndarray:
    column = images["orientation"] if "orientation" in images.columns else [None] * len(images)
    return np.array([value if isinstance(value, str) else None for value in column], dtype=object)


def _top_identities(table: pd.DataFrame, queries: int, k: int) -> dict[str, np.ndarray]:
    """Per query the ``k`` identities of highest fused score (their best image); fused scores are
    step functions, so ties are broken by the cosine — by sorting on it second, never by adding
    it (any weight added would outvote the smallest real steps)."""
    best = (table.sort_values(["query", "score", "cosine"], ascending=[True, False, False],
                              kind="stable")
            .drop_duplicates(["query", "identity"]))
    best = best.assign(rank=best.groupby("query").cumcount())
    best = best[best["rank"] < k]
    names = np.full((queries, k), "", dtype=object)
    scores = np.full((queries, k), -np.inf, dtype=np.float32)
    images = np.full((queries, k), -1, dtype=np.int64)
    names[best["query"], best["rank"]] = best["identity"].to_numpy()
    scores[best["query"], best["rank"]] = best["score"].to_numpy()
    if "image" in best.columns:
        images[best["query"], best["rank"]] = best["image"].to_numpy()
    return {"identity": names, "score": scores, "image": images}
