"""Re-rank a global shortlist with local keypoint matches, calibrated and fused (WildFusion).

The pairs are scored by the global cosine and each local matcher (``scoring_``: a
:class:`~wildreid.scorers.PairScoring` of a :class:`~wildreid.scorers.CosineScorer` and a
:class:`~wildreid.scorers.LocalScorer`, ``local_scorer_``); this module says which pairs are
scored and what their scores mean. ``fit`` on the database: keypoints of every
database image (on the animal when a region is known), then a bounded sample of
database-vs-database pairs — pseudo-queries against their shortlist in a pseudo-database, as in
:mod:`wildreid.openset` — fits one isotonic calibration per matcher (the global cosine is a
matcher too) and the per-species ``new_individual`` thresholds
(:meth:`~wildreid.openset.OpenSetDecision.from_pseudo_queries`) on cross-fitted fused scores
(each pair calibrated without its pseudo-query's identity). ``rank`` scores each query's
shortlist and aggregates per identity (max).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator

from wildreid.distributed import RayPool
from wildreid.fusion import Calibration, cross_fitted_fusion
from wildreid.isolation import Isolator, by_species
from wildreid.openset import OpenSetDecision, pseudo_split, species_keys
from wildreid.ranking import index_dir, nearest_images
from wildreid.scorers import CosineScorer, LocalScorer, PairScoring, Side, keypoint_regions

#: Where local keypoints are kept: on the animal's mask, or anywhere on the photo; ``auto``
#: chooses one of the two per species on the database (:meth:`LocalReranking.fit`).
KEYPOINT_PLACES = ("animal", "image", "auto")
#: Pseudo-queries per species that choose between the places of ``keypoints_on="auto"``.
_CHOICE_QUERIES = 100


class LocalReranking(BaseEstimator):
    """Shortlist of ``shortlist`` database images per query by global cosine (``None``: every
    database image of the query's species), re-scored by local matchers (``features``:
    ``aliked``, ``disk``, ``sift``, ``orb``), calibrated and fused.

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
        """Check the parameters and build the components: the scorers (keypoint extractors and
        matchers)."""
        places = (self.keypoints_on.values() if isinstance(self.keypoints_on, dict)
                  else [self.keypoints_on])
        if any(place not in KEYPOINT_PLACES for place in places):
            raise ValueError(f"keypoints_on must be one of {', '.join(KEYPOINT_PLACES)} (or a "
                             f"dict of them by species), not {self.keypoints_on!r}")
        self.pool_ = None if self.ray is None else RayPool(self.ray)
        self.local_scorer_ = LocalScorer(self.features, self.max_keypoints, self.long_side,
                                         self.pair_score, self.mirror, self.device,
                                         self.batch_size, self.cache_dir, self.workers,
                                         self.progress, self.pool_, ransac=self.keep_pair_scores)
        self.scoring_ = PairScoring([CosineScorer(), self.local_scorer_], self.keep_pair_scores)

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
        self.database_ = Side(images, features, regions,
                              self.local_scorer_.keypoints(images, regions, "database"))
        self.shortlist_indexes_: dict = {}  # approximate indexes of very large species, by species
        self.database_identities_ = identities
        self.database_species_ = species
        queries, unknown = self._bounded(split.queries, split.unknown, species, rng)
        reference = split.reference
        shortlist, _ = nearest_images(features[reference], species[reference], features[queries],
                                      species[queries], self.shortlist or len(reference))
        rows, columns = np.nonzero(shortlist >= 0)
        pairs = np.stack([queries[rows], reference[shortlist[rows, columns]]], 1)
        scores = self.scoring_.score(self.database_, self.database_, pairs, "calibration pairs")
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
            shortlist, _ = nearest_images(features[reference], None, features[queries], None,
                                          self.shortlist or len(reference))
            rows, columns = np.nonzero(shortlist >= 0)
            members = np.concatenate([queries, reference])  # local rows: queries, then reference
            pairs = np.stack([rows, len(queries) + shortlist[rows, columns]], 1)
            subset = images.iloc[members]
            top1 = {}
            for place in ("animal", "image"):
                regions = keypoint_regions(subset, place, isolator, f"{name}: regions")
                found = self.local_scorer_.keypoints(subset, regions,
                                                     f"{name}: choosing keypoints ({place})")
                side = Side(subset, features[members], regions, found)
                # Not mirrored: each place is judged on the pairs as they are.
                scores = self.scoring_.score(side, side, pairs,
                                             f"{name}: keypoints on the {place}", mirror=False)
                hits = []
                for matcher in self.features:
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
        queries = Side(images, features, regions,
                       self.local_scorer_.keypoints(images, regions, "queries"))
        gallery = self.database_.features
        shortlist, _ = nearest_images(gallery, self.database_species_, features, species,
                                      self.shortlist or len(gallery), self.shortlist_indexes_,
                                      index_dir(self.cache_dir))
        rows, columns = np.nonzero(shortlist >= 0)
        pairs = np.stack([rows, shortlist[rows, columns]], 1)
        scores = self.scoring_.score(queries, self.database_, pairs, "query pairs")
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
        side = Side(images, features, regions,
                    self.local_scorer_.keypoints(images, regions, description))
        scores = self.scoring_.score(side, side, pairs, f"{description} pairs")
        fused = self.calibration_.fuse(scores)
        similarity[pairs[:, 0], pairs[:, 1]] = fused
        similarity[pairs[:, 1], pairs[:, 0]] = fused
        return similarity


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
