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

import inspect
import numbers
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, clone

from wildreid.defaults import FIRST_STAGE_BY_RECALL, PRESETS
from wildreid.distributed import RayPool
from wildreid.fusion import FUSION_RULES, SpeciesFusion
from wildreid.isolation import Isolator
from wildreid.matching import PAIR_SCORES
from wildreid.openset import OpenSetDecision
from wildreid.per_species import by_species, species_keys
from wildreid.pseudo_queries import pseudo_split, sightings_of
from wildreid.ranking import index_dir, stacked_descriptors
from wildreid.scorers import (
    MIRROR_MODES,
    CosineScorer,
    LocalScorer,
    PairScoring,
    Side,
    extracted_keypoints,
    kept_score,
    keypoint_regions,
    keypoints_per_image,
    mirror_view,
    without_evidence,
)
from wildreid.shortlist import CosineShortlist, ShortlistSelection
from wildreid.stage import LazyRows

#: Where local keypoints are kept: on the animal's mask, or anywhere on the photo
#: (docs/decisions/0005: the animal; choosing per species on the database never won).
KEYPOINT_PLACES = ("animal", "image")
#: Which scores are fused: every scorer's (the global cosine and each local matcher), or the
#: local matchers' only (docs/decisions/0001: every one).
FUSIONS = ("all", "local")
#: Which database images a query is compared with: every image of its species, or only those
#: of its ``orientation`` (and of the mirror view when ``mirror="opposite"``;
#: docs/decisions/0003: every one).
ORIENTATIONS = ("any", "same")
#: Which of a matcher's scores of a pair is calibrated: one of
#: :data:`~wildreid.matching.PAIR_SCORES` (the sum of match confidences, matches above a
#: confidence, RANSAC inliers; docs/decisions/0002: matches above 0.5).
PAIR_SCORE_CHOICES = PAIR_SCORES
#: How identities are ordered from their images' fused pair scores with a query: by the best
#: one (``max``), or by the sum of their best two (``top2``: two good views outweigh one;
#: docs/decisions/0004: the best one). The score given, which the open-set threshold reads, is
#: the best image's either way.
AGGREGATIONS = ("max", "top2")
#: Images summed into the value that orders identities, by aggregation.
_IMAGES_SUMMED = {"max": 1, "top2": 2}
#: The values of each setting given for all species or per species (a dict by species; in a
#: settings file ``"nyala=animal,lion=image"``).
PER_SPECIES = {"keypoints_on": KEYPOINT_PLACES, "fusion": FUSIONS, "orientation": ORIENTATIONS,
               "pair_score": PAIR_SCORE_CHOICES, "aggregation": AGGREGATIONS,
               "fusion_rule": FUSION_RULES, "cascade_pair_score": PAIR_SCORE_CHOICES}
#: The smallest value of each whole-number setting (``None`` passes where the default is
#: ``None``: every database image, no cascade).
MINIMUMS = {"shortlist": 1, "max_keypoints": 1, "long_side": 32, "calibration_queries": 3,
            "batch_size": 1, "cascade": 1}


class LocalReranking(BaseEstimator):
    """Shortlist of ``shortlist`` database images per query by global cosine (``None``: every
    database image of the query's species), re-scored by local matchers (``features``:
    ``aliked``, ``aliked-nn``, ``disk``, ``dedode``, ``sift``, ``orb``), calibrated and fused.

    Each of ``keypoints_on``, ``pair_score``, ``cascade_pair_score``, ``fusion``,
    ``fusion_rule``, ``orientation`` and ``aggregation`` is one value for every species or a
    dict of them by species (key ``None``: the rest; a species it does not name gets the
    default). They are settings, never chosen inside ``fit``:
    choosing between pipelines is :class:`~wildreid.selection.PipelineSelection`'s job, and the
    evidence behind each default is a decision record (``docs/decisions``).

    ``keypoints_on``: ``animal`` keeps keypoints inside the animal's mask (regions from metadata
    or the segmenter, whole image where the guard falls back), ``image`` uses the whole photo.
    ``pair_score``: which of a matcher's scores of a pair is calibrated
    (:data:`PAIR_SCORE_CHOICES`): the sum of match confidences, the matches above a confidence
    (``matches@0.5``: the default), or the RANSAC inliers (RANSAC then runs on every pair).
    ``cascade_pair_score``: the same for a cascade's later matchers (``pair_score`` is the
    first one's, which also makes the cut): a nearest-neighbour matcher's confidences are
    1 - its ratio, LightGlue's are probabilities, so the two want different pair scores.
    ``aggregation``: how identities are ordered from their images' fused pair scores
    (:data:`AGGREGATIONS`): by their best image's (``max``) or by the sum of their best two
    (``top2``); an identity's score is its best image's either way.
    ``max_keypoints``: keypoints kept per image (the strongest).
    ``long_side``: the long side, in pixels, of the animal's box (or photo) that keypoints are
    detected on.
    ``calibration_queries``: pseudo-queries per species used to fit calibration and thresholds
    (the pair sample stays ``calibration_queries x shortlist`` whatever the database size).
    ``mirror``: also match the query flipped left-right, for pairs whose ``orientation`` values
    are mirror views (``opposite``, e.g. a left flank against a right flank) or for every pair
    (``all``, when the orientation is unknown); each pair keeps its better score.
    ``fusion``: which calibrated scores are averaged into the fused one (:data:`FUSIONS`):
    ``all`` (the default) or ``local`` (not the global cosine); after ``fit``, ``fusion_``
    (:class:`~wildreid.fusion.SpeciesFusion`) holds the names fused per species and their
    calibration (``calibration_``).
    ``fusion_rule``: how those calibrated scores are combined
    (:data:`~wildreid.fusion.FUSION_RULES`): their ``mean`` (WildFusion's; the default) or a
    ``logistic`` regression over their log-odds per species, fitted on cross-fitted calibrated
    calibration pairs (a learned stacker).
    ``orientation``: which database images a query is compared with (:data:`ORIENTATIONS`):
    ``any`` (the default: every image of its species) or ``same`` (those whose ``orientation``
    is the query's, or its mirror view with ``mirror="opposite"``; images of unknown
    orientation always, and the whole species when it has no image of the query's
    orientation). A flank of a striped antelope and the other flank are two patterns; a nose
    and an ear of one lion are never compared by orientation, since each lion has one photo of
    each part.
    ``first_stage``: which database photos each query is matched with
    (:mod:`wildreid.shortlist`; ``None``: :class:`~wildreid.shortlist.CosineShortlist`, the
    global descriptors' cosine), ``shortlist`` of them per query; fitted on the database
    (``first_stage_``) and, for the calibration, on each pseudo-split's reference photos. One
    that measures itself at a shortlist size (a ``size`` parameter:
    :class:`~wildreid.shortlist.ShortlistSelection`) is given ``shortlist``.
    ``cascade``: with two or more ``features``, the first matcher scores every pair and the
    later ones only each query's best ``cascade`` database images by it (ties by cosine), as in
    ``fit`` so in ``rank``: a slow, faithful matcher (LightGlue) re-scores what a fast one
    (``aliked-nn``) puts first. The other pairs are dropped.
    """

    def __init__(self, features: Sequence[str] = ("aliked",), shortlist: int | None = 100,
                 max_keypoints: int = 512, long_side: int = 512,
                 keypoints_on: str | dict[str | None, str] = "animal",
                 pair_score: str | dict[str | None, str] = "matches@0.5",
                 calibration_queries: int = 300,
                 device: str = "auto", batch_size: int = 128, cache_dir: str | Path | None = None,
                 workers: int | None = None, progress: bool = True, seed: int = 0,
                 keep_pair_scores: bool = False, mirror: str = "none", ray: str | None = None,
                 fusion: str | dict[str | None, str] = "all",
                 orientation: str | dict[str | None, str] = "any",
                 aggregation: str | dict[str | None, str] = "max", cascade: int | None = None,
                 first_stage: BaseEstimator | None = None,
                 fusion_rule: str | dict[str | None, str] = "mean",
                 cascade_pair_score: str | dict[str | None, str] = "matches@0.5"):
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
        self.fusion = fusion
        self.orientation = orientation
        self.aggregation = aggregation
        self.cascade = cascade
        self.first_stage = first_stage
        self.fusion_rule = fusion_rule
        self.cascade_pair_score = cascade_pair_score

    @property
    def runs_ransac(self) -> bool:
        """Whether pairs are matched with RANSAC (CPU time): only where a species keeps its
        inliers, or every score is kept."""
        pair_scores = {*_per_species(self.pair_score, _DEFAULTS["pair_score"]).values(),
                       *(_per_species(self.cascade_pair_score, _DEFAULTS["cascade_pair_score"])
                         .values() if self.cascade is not None else ())}
        return self.keep_pair_scores or "inliers" in pair_scores

    def _build(self) -> None:
        """Check the parameters and build the components: the scorers (keypoint extractors and
        matchers)."""
        for name, value in self.get_params().items():
            check_setting(name, value)
        check_matchers(self.features, self.cascade)
        self.pool_ = None if self.ray is None else RayPool(self.ray)
        stages = ([self.features[:1], self.features[1:]] if self.cascade is not None
                  else [self.features])
        extractors: dict = {}  # by keypoint method: the stages share their keypoints
        ransac = self.runs_ransac
        # The bare column of the pair tables is the confidence sum; each species' own pair
        # score is taken from every column by _kept.
        scorers = [LocalScorer(matchers, self.max_keypoints, self.long_side,
                               "confidence_sum", self.mirror, self.device,
                               self.batch_size, self.cache_dir, self.workers, self.progress,
                               self.pool_, ransac=ransac, extractors=extractors)
                   for matchers in stages]
        self.local_scorer_ = scorers[0]
        self.scoring_ = PairScoring([CosineScorer(), self.local_scorer_], self.keep_pair_scores)
        # The later matchers of a cascade, scoring each query's best pairs by the first.
        self.cascade_scoring_ = (PairScoring(scorers[1:], self.keep_pair_scores)
                                 if len(scorers) > 1 else None)

    def fit(self, images: pd.DataFrame, features: np.ndarray, isolator: Isolator | None
            ) -> LocalReranking:
        self._build()
        identities = images["identity"].astype(str).to_numpy()
        species = species_keys(images.get("species"), len(images))
        rng = np.random.default_rng(self.seed)
        split = pseudo_split(identities, rng, sightings=sightings_of(images))
        if split is None:
            raise ValueError("local re-ranking needs 3 or more database identities to calibrate")
        # Each setting by species (key None: the species it does not name).
        self.keypoints_on_ = _per_species(self.keypoints_on, _DEFAULTS["keypoints_on"])
        self.pair_score_ = _per_species(self.pair_score, _DEFAULTS["pair_score"])
        self.orientation_ = _per_species(self.orientation, _DEFAULTS["orientation"])
        self.aggregation_ = _per_species(self.aggregation, _DEFAULTS["aggregation"])
        self.fusion_rule_ = _per_species(self.fusion_rule, _DEFAULTS["fusion_rule"])
        self.cascade_pair_score_ = _per_species(self.cascade_pair_score,
                                                _DEFAULTS["cascade_pair_score"])
        regions = keypoint_regions(images, self.keypoints_on_, isolator, "database: regions")
        self.database_ = Side(images, features, regions,
                              self._keypoints(images, regions, "database"))
        self.database_identities_ = identities
        self.database_species_ = species
        self.first_stage_ = self._first_stage().fit(self.database_, species)
        queries, unknown = self._bounded(split.queries, split.unknown, species, rng)
        rows, pairs = self._calibration_pairs(queries, split.reference, species)
        columns = self.scoring_.score(self.database_, self.database_, pairs, "calibration pairs",
                                      details=True)
        # Photos the calibration matched that no detector found a keypoint on (blank, tiny):
        # judged by the cosine alone, and said so.
        self.database_without_keypoints_ = int(
            (keypoints_per_image(columns, self.local_scorer_.features, pairs) == 0).sum())
        scores = self._kept(columns, species[pairs[:, 0]])
        if self.cascade_scoring_ is not None:  # the later matchers score each one's best pairs
            keep, scores, _ = self._cascaded(self.database_, self.database_, pairs, scores,
                                             species[pairs[:, 0]], "calibration pairs",
                                             self.cascade)
            rows, pairs = rows[keep], pairs[keep]
        same = identities[pairs[:, 0]] == identities[pairs[:, 1]]
        self._check_same_orientation(same, species[pairs[:, 0]])
        # One calibration per species: a matcher's raw scores live on each species' own scale.
        names = tuple(scores)
        fused = {"all": names, "local": tuple(name for name in names if name != "cosine")}
        self.fusion_ = SpeciesFusion.fit(
            scores, same, species[pairs[:, 0]], identities[pairs[:, 0]],
            {key: fused[value] for key, value in
             _per_species(self.fusion, _DEFAULTS["fusion"]).items()},
            self.fusion_rule_, seed=self.seed)
        # The thresholds from out-of-fold fused scores (folds by pseudo-query identity):
        # in-sample ones sit where the calibration memorised the labels.
        table = pd.DataFrame({
            "query": rows, "identity": identities[pairs[:, 1]], "cosine": scores["cosine"],
            "score": self.fusion_.out_of_fold(scores, same, identities[pairs[:, 0]],
                                              species[pairs[:, 0]], self.seed),
            "local": self.fusion_.evidence(scores, species[pairs[:, 0]])})
        top = _top_identities(table, len(queries), 1, self._images_summed(species[pairs[:, 0]]))
        self.decision_ = OpenSetDecision.from_pseudo_queries(
            identities[queries], top["identity"][:, 0], top["score"][:, 0], unknown,
            species[queries])
        self.calibration_pairs_ = len(pairs)
        return self

    def partial_fit(self, images: pd.DataFrame, features: np.ndarray, isolator: Isolator | None
                    ) -> LocalReranking:
        """Add images of known identities to the fitted re-ranking without fitting again: their
        keypoints are found where the fit found the database's (``keypoints_on_``) and the
        database grows; the calibration and the thresholds stay those of the last :meth:`fit`
        (fit again once the database has changed much)."""
        if images.empty:
            return self
        regions = keypoint_regions(images, self.keypoints_on_, isolator, "added: regions")
        keypoints = self._keypoints(images, regions, "added")
        old = self.database_
        if old.regions is None and regions is None:
            grown_regions = None
        else:
            grown_regions = [*(old.regions or [None] * len(old.images)),
                             *(regions or [None] * len(images))]
        self.database_ = Side(pd.concat([old.images, images], ignore_index=True),
                              stacked_descriptors(old.features, features), grown_regions,
                              {name: _joined(old.keypoints[name], keypoints[name])
                               for name in old.keypoints})
        self.database_identities_ = np.concatenate(
            [self.database_identities_, images["identity"].astype(str).to_numpy()])
        self.database_species_ = np.concatenate(
            [self.database_species_, species_keys(images.get("species"), len(images))])
        # The first stage fitted again on the grown database; one that chose keeps its choice.
        self.first_stage_ = (self.first_stage_.partial_fit(self.database_, self.database_species_)
                             if hasattr(self.first_stage_, "partial_fit") else
                             self._first_stage().fit(self.database_, self.database_species_))
        return self

    def _check_same_orientation(self, same: np.ndarray, species: np.ndarray) -> None:
        """A species compared only within one orientation, whose calibration pairs then hold no
        two photos of one individual (each photographed once per orientation, as lions' noses,
        ears and faces are), cannot be calibrated: said so, with what to do."""
        for name in dict.fromkeys(species):
            if by_species(self.orientation_, [name], "any")[0] == "same" and \
                    not same[species == name].any():
                label = "photos without species" if name is None else name
                raise ValueError(
                    f"{label}: orientation 'same' leaves no individual with two photos of one "
                    f"orientation to calibrate on; compare every photo (orientation 'any' for "
                    f"{label})")

    def _cascaded(self, query: Side, gallery: Side, pairs: np.ndarray,
                  scores: dict[str, np.ndarray], species: np.ndarray, description: str,
                  top: int | None, mirror: bool = True
                  ) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
        """The pairs a cascade's later matchers score — each query's (``pairs[:, 0]``) best
        ``top`` by the first matcher's score, ties by cosine (``None``: every pair) — as
        positions in ``pairs``; their ``scores`` with the later matchers' added (pair scores of
        the query ``species``, ``pair_score_``); every column of the later scoring."""
        keep = (np.arange(len(pairs)) if top is None else
                _best_per_query(pairs[:, 0], scores[self.local_scorer_.features[0]],
                                scores["cosine"], top))
        kept = {name: values[keep] for name, values in scores.items()}
        columns = self.cascade_scoring_.score(query, gallery, pairs[keep],
                                              f"{description}: cascade", mirror, details=True)
        kept.update(self._kept(columns, species[keep], self.cascade_scoring_.names,
                               self.cascade_pair_score_))
        return keep, kept, columns

    def _keypoints(self, images: pd.DataFrame, regions, description: str
                   ) -> dict[str, list]:
        """Every matcher's keypoints of ``images`` (of each stage of a cascade), each keypoint
        method's computed once."""
        scorers = [self.local_scorer_, *(self.cascade_scoring_.scorers
                                         if self.cascade_scoring_ is not None else ())]
        return extracted_keypoints({name: extractor for scorer in scorers
                                    for name, extractor in scorer.extractors.items()},
                                   images, regions, description)

    def _first_stage(self, keep_indexes: bool = True) -> BaseEstimator:
        """An unfitted copy of the first stage (default: the global cosine, its approximate
        indexes kept beside the cache when ``keep_indexes``: the database's, not a
        pseudo-split's)."""
        if self.first_stage is None:
            return CosineShortlist(index_dir(self.cache_dir) if keep_indexes else None)
        stage = clone(self.first_stage)
        if "size" in stage.get_params(deep=False) and self.shortlist is not None:
            stage.set_params(size=self.shortlist)  # chosen at the size it will be asked for
        return stage

    def _calibration_pairs(self, queries: np.ndarray, reference: np.ndarray,
                           species: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pseudo-queries' shortlists among the reference images, by the first stage fitted on
        them, as real queries' are made (``orientation_``): each pair's pseudo-query row and its
        ``(query, reference)`` images."""
        asked = self.database_.subset(queries)
        first_stage = self._first_stage(keep_indexes=False)
        shortlist = first_stage.fit(self.database_.subset(reference), species[reference]).search(
            asked, species[queries], self.shortlist or len(reference),
            self._views(asked.orientation, species[queries]))
        rows, columns = np.nonzero(shortlist >= 0)
        return rows, np.stack([queries[rows], reference[shortlist[rows, columns]]], 1)

    def _scored(self, query: Side, gallery: Side, pairs: np.ndarray, description: str,
                species: np.ndarray, mirror: bool = True) -> dict[str, np.ndarray]:
        """The scores (``scoring_.names``) of ``pairs``, each matcher's being the pair score
        of its query's ``species`` (``pair_score_``)."""
        return self._kept(self.scoring_.score(query, gallery, pairs, description, mirror,
                                              details=True), species)

    def _kept(self, columns: dict[str, np.ndarray], species: np.ndarray,
              matchers: Sequence[str] | None = None, pair_scores: dict | None = None
              ) -> dict[str, np.ndarray]:
        """From every column of a scoring, the scores: the cosine (where scored) and each of
        ``matchers``' (default: the first stage's) pair score of each pair's query ``species``
        (``pair_scores``, default ``pair_score_``)."""
        scores = {"cosine": columns["cosine"]} if "cosine" in columns else {}
        chosen = by_species(self.pair_score_ if pair_scores is None else pair_scores, species,
                            _DEFAULTS["pair_score"])
        for matcher in self.local_scorer_.features if matchers is None else matchers:
            found = np.empty(len(chosen), np.float32)
            for value in dict.fromkeys(chosen):
                rows = chosen == value
                found[rows] = kept_score(columns, matcher, value)[rows]
            # No keypoint on a side: no local evidence, missing rather than "nothing matched".
            found[without_evidence(columns, matcher)] = np.nan
            scores[matcher] = found
        return scores

    def _images_summed(self, species: np.ndarray) -> np.ndarray:
        """Per pair, the images summed into its identity's score (its query's species'
        ``aggregation_``)."""
        return np.array([_IMAGES_SUMMED[value] for value in
                         by_species(self.aggregation_, species, "max")], np.int64)

    def _views(self, orientation: np.ndarray, species: np.ndarray) -> list[frozenset | None]:
        """Per image, the database orientations it is compared with (``None``: every one)."""
        modes = by_species(self.orientation_, species, "any")
        return [_views_of(value, self.mirror) if mode == "same" else None
                for value, mode in zip(orientation, modes)]

    @property
    def calibration_(self):
        """The fitted calibration (:class:`~wildreid.fusion.SpeciesCalibration`), the fusion's."""
        return self.fusion_.calibration

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
             k: int = 5) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Top-``k`` identities and fused scores per query (``""``/-inf pad), the database
        row of the pair that gave each identity its score (-1 pads), and each query's most
        keypoints by any matcher (0: none, judged by the cosine alone; -1: no pair scored)."""
        species = species_keys(images.get("species"), len(images))
        regions = keypoint_regions(images, self.keypoints_on_, isolator, "queries: regions")
        queries = Side(images, features, regions, self._keypoints(images, regions, "queries"))
        shortlist = self.first_stage_.search(queries, species, self.shortlist,
                                             self._views(queries.orientation, species))
        rows, columns = np.nonzero(shortlist >= 0)
        pairs = np.stack([rows, shortlist[rows, columns]], 1)
        details = self.scoring_.score(queries, self.database_, pairs, "query pairs", details=True)
        scores = self._kept(details, species[rows])
        counted = keypoints_per_image(details, self.local_scorer_.features, pairs, (0,))
        if self.cascade_scoring_ is not None:
            keep, scores, later = self._cascaded(queries, self.database_, pairs, scores,
                                                 species[rows], "query pairs", self.cascade)
            rows, pairs = rows[keep], pairs[keep]
            counted = np.maximum(counted, keypoints_per_image(
                later, self.cascade_scoring_.names, pairs, (0,)).reindex(counted.index,
                                                                          fill_value=0))
        keypoints = np.full(len(images), -1, np.int64)
        keypoints[counted.index.to_numpy()] = counted.to_numpy()
        table = pd.DataFrame({"query": rows, "identity": self.database_identities_[pairs[:, 1]],
                              "score": self.fusion_.fuse(scores, species[rows]),
                              "local": self.fusion_.evidence(scores, species[rows]),
                              "cosine": scores["cosine"], "image": pairs[:, 1]})
        top = _top_identities(table, len(images), k, self._images_summed(species[rows]))
        return top["identity"], top["score"], top["image"], keypoints


    def similarity(self, images: pd.DataFrame, features: np.ndarray, isolator: Isolator | None,
                   neighbours: int = 10, description: str = "new individuals") -> np.ndarray:
        """The fused score of every two of ``images`` (one species), as candidates are ranked:
        each image is matched with its ``neighbours`` most similar others by cosine, both ways
        scored once (lower row first) and fused; pairs never matched score 0. A cascade's later
        matchers score every one of these pairs (few per image)."""
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
        side = Side(images, features, regions, self._keypoints(images, regions, description))
        species = species_keys(images.get("species"), count)
        scores = self._scored(side, side, pairs, f"{description} pairs", species[pairs[:, 0]])
        if self.cascade_scoring_ is not None:  # few pairs per image: the later matchers score all
            _, scores, _ = self._cascaded(side, side, pairs, scores, species[pairs[:, 0]],
                                          f"{description} pairs", None)
        fused = self.fusion_.fuse(scores, species[pairs[:, 0]])
        similarity[pairs[:, 0], pairs[:, 1]] = fused
        similarity[pairs[:, 1], pairs[:, 0]] = fused
        return similarity


#: Each per-species setting's value for the species a dict does not name: its parameter's
#: default (read from the signature: one place).
_DEFAULTS = {name: parameter.default for name, parameter in
             inspect.signature(LocalReranking).parameters.items() if name in PER_SPECIES}


def _joined(first: Sequence, second: Sequence) -> Sequence:
    """``second``'s items after ``first``'s; two lazy views of one cached stage stay lazy."""
    if isinstance(first, LazyRows) and isinstance(second, LazyRows) and \
            first.stage is second.stage:
        return first + second
    return [*first, *second]


def check_setting(name: str, value) -> None:
    """``ValueError`` saying what is wrong with ``value`` for the parameter ``name`` on its own
    (a per-species setting's values, a whole number's minimum, the mirror); what depends on
    two parameters (the matchers and the cascade) is :func:`check_matchers`'."""
    if name in PER_SPECIES:
        choices = PER_SPECIES[name]
        if any(choice not in choices for choice in _per_species(value, choices[0]).values()):
            raise ValueError(f"{name} must be one of {', '.join(choices)} (or a dict of them by "
                             f"species), not {value!r}")
    elif name == "mirror" and value not in MIRROR_MODES:
        raise ValueError(f"mirror must be one of {', '.join(MIRROR_MODES)}, not {value!r}")
    elif name in MINIMUMS and value is not None and name != "cascade":  # cascade: below
        whole = isinstance(value, numbers.Integral) and not isinstance(value, bool)
        if not whole or value < MINIMUMS[name]:
            raise ValueError(f"{name} must be a whole number, {MINIMUMS[name]} or more, not "
                             f"{value!r}")


def check_matchers(features: Sequence[str], cascade: int | None) -> None:
    """``ValueError`` unless the local matchers are distinct and, with a ``cascade``, two or
    more (the first scores every pair) with ``cascade`` a whole number of images, 1 or more."""
    if not tuple(features):
        raise ValueError("a local re-ranking needs one local matcher or more")
    if len(set(features)) != len(tuple(features)):
        raise ValueError(f"each local matcher once, not {tuple(features)}")
    whole = isinstance(cascade, numbers.Integral) and not isinstance(cascade, bool)
    if cascade is not None and (not whole or cascade < 1 or len(tuple(features)) < 2):
        raise ValueError(f"cascade must be a number of images (1 or more) and needs two or more "
                         f"local matchers (the first scores every pair), not cascade={cascade!r} "
                         f"with {tuple(features)}")


def _per_species(value: str | dict[str | None, str], default: str) -> dict[str | None, str]:
    """A setting given for all species or per species, as a dict by species whose key ``None``
    (the species it does not name) holds ``default`` unless the setting gives it."""
    return {None: default, **(dict(value) if isinstance(value, dict) else {None: value})}


def _views_of(orientation: str | None, mirror: str) -> frozenset | None:
    """The database orientations an image of ``orientation`` is compared with: its own and, with
    ``mirror="opposite"``, its mirror view; ``None`` (every one) when its orientation is unknown."""
    if orientation is None:
        return None
    mirrored = mirror_view(orientation) if mirror == "opposite" else None
    return frozenset({orientation, mirrored} - {None})


def _best_per_query(queries: np.ndarray, score: np.ndarray, cosine: np.ndarray, top: int
                    ) -> np.ndarray:
    """Positions of each query's ``top`` pairs of highest ``score``, ties by ``cosine``, in the
    order given. Pairs without the score (NaN: a photo the first matcher found no keypoint on)
    are ranked apart, each query's ``top`` of them by cosine: the later matchers, which may find
    keypoints there, still judge them."""
    missing = np.isnan(score)
    if missing.any():
        judged, unjudged = np.flatnonzero(~missing), np.flatnonzero(missing)
        return np.sort(np.concatenate([
            judged[_best_per_query(queries[judged], score[judged], cosine[judged], top)],
            unjudged[_best_per_query(queries[unjudged], cosine[unjudged], cosine[unjudged],
                                     top)]]))
    order = np.lexsort((-cosine, -score, queries))
    grouped = queries[order]
    starts = np.flatnonzero(np.r_[True, grouped[1:] != grouped[:-1]])
    position = np.arange(len(order)) - np.repeat(starts, np.diff(np.r_[starts, len(order)]))
    return np.sort(order[position < top])


def _top_identities(table: pd.DataFrame, queries: int, k: int,
                    summed: int | np.ndarray = 1) -> dict[str, np.ndarray]:
    """Per query the ``k`` identities of highest fused score: of their best image, or the sum
    over their best ``summed`` images (per row of ``table``, or one for all). The score and image
    given are always the best image's: a sum only orders the identities, since the open-set
    threshold is fitted on pseudo-queries that meet their identity with fewer photos than real
    queries do, so sums would sit lower there than at query time (docs/decisions/0004).
    Fused scores are step functions (isotonic plateaus), so ties are broken by the raw local
    evidence (``local``, when the table has it: within a plateau, more matches still mean more;
    summed as the scores are), then by the best image's cosine — by sorting on them, never by
    adding them (any weight added would outvote the smallest real steps)."""
    keys = ["query", "score", *(["local"] if "local" in table.columns else []), "cosine"]
    order = [True] + [False] * (len(keys) - 1)
    ranked = table.assign(summed=np.broadcast_to(summed, len(table))).sort_values(
        keys, ascending=order, kind="stable")
    if (ranked["summed"] == 1).all():
        best = ranked.drop_duplicates(["query", "identity"])
    else:
        position = ranked.groupby(["query", "identity"]).cumcount().to_numpy()
        ranked = ranked[position < ranked["summed"].to_numpy()]
        grouped = ranked.groupby(["query", "identity"], sort=False)
        best = grouped.first()  # the best image's row, ordered by the sums over the next ones
        sums = [f"{column} summed" for column in keys[1:-1]]
        for column, total in zip(keys[1:-1], sums):
            best[total] = grouped[column].sum()
        best = best.reset_index().sort_values(["query", *sums, "cosine"], ascending=order,
                                              kind="stable")
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


def preset_reranking(preset: str) -> dict | None:
    """The parameters of ``preset``'s local re-ranking (:data:`~wildreid.defaults.PRESETS`;
    ``None``: none), its first stage built where it is chosen by recall
    (:data:`~wildreid.defaults.FIRST_STAGE_BY_RECALL`)."""
    found = PRESETS[preset]
    if found is None or preset not in FIRST_STAGE_BY_RECALL:
        return found
    return {**found, "first_stage": ShortlistSelection()}
