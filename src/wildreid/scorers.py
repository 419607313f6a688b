"""Pair scorers: each gives one or more scores of ``(query, gallery)`` pairs of images, as
wildlife-tools' similarity pipelines do — :class:`CosineScorer` (the global descriptor's cosine) and
:class:`LocalScorer` (each local matcher's score) — and :class:`PairScoring`, the scorers whose
calibrated scores are fused, with the instrumentation (every column of every pair) kept outside
the estimator.

A scorer has ``names`` (the scores it gives, each calibrated and fused on its own) and
``score(query, gallery, pairs, description, mirror)`` over two :class:`Side` s, giving those
scores and any detail columns (``"<name>:<detail>"``). Scorers hold what scoring a pair takes and
nothing of which pairs are scored or what the scores mean (that is :mod:`wildreid.rerank`'s: the
shortlist, the calibration, the decision). Pairs are always scored query first: the direction
calibration pairs are scored in is the direction query pairs are, since a one-sided score (SIFT's
ratio test) is another function the other way round.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from wildreid.isolation import Isolator, Region
from wildreid.local import KeypointExtractor, Keypoints, create_local_features
from wildreid.matching import (
    KEYPOINT_COUNTS,
    PAIR_SCORES,
    MatchingWorker,
    create_matcher,
    score_pairs,
)
from wildreid.per_species import by_species
from wildreid.stage import subset

#: Which pairs are also matched with the query image mirrored (the pair keeps the better score).
MIRROR_MODES = ("none", "opposite", "all")


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


def mirror_view(orientation) -> str | None:
    """The mirror view of an ``orientation`` value: ``right`` for ``left``, ``left_ear`` for
    ``right_ear``...; ``None`` for values with no side (and missing ones)."""
    if not isinstance(orientation, str) or not ("left" in orientation or "right" in orientation):
        return None
    return orientation.replace("left", "\0").replace("right", "left").replace("\0", "right")


def mirror_views(first: Sequence, second: Sequence) -> np.ndarray:
    """Pairs of ``orientation`` values that are mirror views: ``left``/``right``,
    ``left_ear``/``right_ear``... (missing orientations never are)."""
    mirror_of = {value: mirror_view(value) for value in set(first)}  # few distinct orientations
    return np.array([mirror_of[a] is not None and mirror_of[a] == b
                     for a, b in zip(first, second)], dtype=bool)


def orientations(images: pd.DataFrame) -> np.ndarray:
    """Each image's ``orientation`` (``None`` where missing or no such column)."""
    column = images["orientation"] if "orientation" in images.columns else [None] * len(images)
    return np.array([value if isinstance(value, str) else None for value in column], dtype=object)


@dataclass(frozen=True)
class Side:
    """One side of the pairs to score: images (rows with ``filepath``, maybe ``orientation``),
    their L2-normalised global embeddings, the regions their keypoints are kept in and their
    keypoints by local matcher (both may be empty for scorers that do not read them).
    ``orientation`` is read from the images once, when the side is made."""

    images: pd.DataFrame
    features: np.ndarray
    regions: Sequence[Region | None] | None = None
    keypoints: dict[str, Sequence[Keypoints]] | None = None
    orientation: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "orientation", orientations(self.images))

    def subset(self, rows: Sequence[int]) -> Side:
        """The side of ``rows`` alone (keypoints left unread where they are lazy)."""
        rows = np.asarray(rows, np.int64)
        return Side(self.images.iloc[rows], np.asarray(self.features)[rows],
                    None if self.regions is None else [self.regions[i] for i in rows],
                    None if self.keypoints is None else
                    {name: subset(found, rows) for name, found in self.keypoints.items()})


#: Pairs whose two embeddings are gathered at once by :class:`CosineScorer`.
_COSINE_PAIRS = 8192


class CosineScorer:
    """The global descriptors' cosine of each pair (the embeddings are L2-normalised)."""

    names = ("cosine",)

    def score(self, query: Side, gallery: Side, pairs: np.ndarray, description: str = "pairs",
              mirror: bool = True) -> dict[str, np.ndarray]:
        pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
        first = np.asarray(query.features, np.float32)
        second = np.asarray(gallery.features, np.float32)
        cosine = np.empty(len(pairs), np.float32)
        for begin in range(0, len(pairs), _COSINE_PAIRS):  # bounded memory at any pair count
            part = pairs[begin:begin + _COSINE_PAIRS]
            cosine[begin:begin + len(part)] = np.einsum("ij,ij->i", first[part[:, 0]],
                                                        second[part[:, 1]])
        return {"cosine": cosine}


class PairScoring:
    """The scorers whose scores of the same pairs are calibrated and fused, in this order.

    ``keep_pair_scores``: keep, in ``pair_tables`` by the description of each call, every column
    every scorer gives for each pair (rows ``first``, ``second``), for studies of calibration and
    fusion."""

    def __init__(self, scorers: Sequence, keep_pair_scores: bool = False):
        self.scorers = tuple(scorers)
        self.keep_pair_scores = keep_pair_scores
        self.pair_tables: dict[str, pd.DataFrame] = {}
        self.names = tuple(name for scorer in self.scorers for name in scorer.names)
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"two scorers give scores of one name: {self.names}")

    def score(self, query: Side, gallery: Side, pairs: np.ndarray, description: str,
              mirror: bool = True, details: bool = False) -> dict[str, np.ndarray]:
        """Each score (:attr:`names`) of each ``(query row, gallery row)`` of ``pairs``. The
        gallery may be the queries themselves. ``mirror=False``: no pair matched mirrored.
        ``details``: every column the scorers give (each matcher's
        :data:`~wildreid.matching.PAIR_SCORES`) besides the scores."""
        pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
        columns: dict[str, np.ndarray] = {}
        for scorer in self.scorers:
            columns.update(scorer.score(query, gallery, pairs, description, mirror))
        if self.keep_pair_scores:
            self.pair_tables[description] = pd.DataFrame(
                {"first": pairs[:, 0], "second": pairs[:, 1], **columns})
        return columns if details else {name: columns[name] for name in self.names}


class _MirroredQueries(NamedTuple):
    """Keypoints of mirrored query images (each once), the pairs also matched mirrored, and
    where each of those pairs finds its query among the keypoints."""

    keypoints: dict[str, Sequence[Keypoints]]
    flipped: np.ndarray
    positions: np.ndarray


class LocalScorer:
    """Scores of ``(query, gallery)`` pairs by each local matcher of ``features`` (``aliked``,
    ``disk``, ``sift``, ``orb``: the one registered for each), from the sides' keypoints.

    ``pair_score``: which of a matcher's scores (:data:`~wildreid.matching.PAIR_SCORES`) is kept.
    ``ransac``: compute RANSAC inliers (CPU time) even when they are not the kept score; an
    attribute a caller may set between calls.
    ``mirror``: also match the query flipped left-right, for pairs whose ``orientation`` values
    are mirror views (``opposite``) or for every pair (``all``); the better score is kept.
    ``pool``: a :class:`~wildreid.distributed.RayPool` for keypoints and matching.
    ``extractors``: keypoint extractors by keypoint method (``cache_key``), shared with other
    scorers (the stages of a cascade): matchers of one method's keypoints (``aliked``,
    ``aliked-nn``) share one extractor, so its keypoints are computed once.
    Besides each matcher's kept score, :meth:`score` gives every one of its
    :data:`~wildreid.matching.PAIR_SCORES` (``"<matcher>:<score>"``, mirrored ones
    ``"<matcher>:mirrored:<score>"``, NaN where not matched mirrored); ``pairs_per_second``: per
    matcher, in the last call."""

    def __init__(self, features: Sequence[str], max_keypoints: int, long_side: int,
                 pair_score: str = "confidence_sum", mirror: str = "none", device: str = "auto",
                 batch_size: int = 128, cache_dir: str | Path | None = None,
                 workers: int | None = None, progress: bool = True, pool=None,
                 ransac: bool = False, extractors: dict[str, KeypointExtractor] | None = None):
        if mirror not in MIRROR_MODES:
            raise ValueError(f"mirror must be one of {', '.join(MIRROR_MODES)}, not {mirror!r}")
        if pair_score not in PAIR_SCORES:
            raise ValueError(f"pair_score must be one of {', '.join(PAIR_SCORES)}, not "
                             f"{pair_score!r}")
        self.features, self.pair_score, self.mirror = tuple(features), pair_score, mirror
        self.batch_size, self.progress, self.pool = batch_size, progress, pool
        # RANSAC inliers cost CPU time: computed only when they are the kept score or asked for.
        self.ransac = ransac or pair_score == "inliers"
        self.names = self.features
        shared = {} if extractors is None else extractors
        self.extractors: dict[str, KeypointExtractor] = {}
        for name in self.features:
            method = create_local_features(name, max_keypoints=max_keypoints, long_side=long_side,
                                           device=device)
            if method.cache_key not in shared:
                shared[method.cache_key] = KeypointExtractor(method, cache_dir, workers,
                                                             progress, pool)
            self.extractors[name] = shared[method.cache_key]
        self.matchers = {name: create_matcher(name, device=device, batch_size=batch_size)
                         for name in self.features}
        self.pairs_per_second: dict[str, float] = {}

    def keypoints(self, images: pd.DataFrame, regions: Sequence[Region | None] | None,
                  description: str, mirrored: bool = False) -> dict[str, Sequence[Keypoints]]:
        """Each matcher's keypoints of ``images`` (``mirrored``: of the images flipped)."""
        return extracted_keypoints(self.extractors, images, regions, description, mirrored)

    def mirrored(self, query_orientation: Sequence, gallery_orientation: Sequence) -> np.ndarray:
        """Which pairs are also matched with the query mirrored."""
        if self.mirror == "all":
            return np.ones(len(query_orientation), bool)
        if self.mirror == "opposite":
            return mirror_views(query_orientation, gallery_orientation)
        return np.zeros(len(query_orientation), bool)

    def score(self, query: Side, gallery: Side, pairs: np.ndarray, description: str = "pairs",
              mirror: bool = True) -> dict[str, np.ndarray]:
        """Every matcher's score of each ``(query row, gallery row)`` of ``pairs`` and its detail
        columns. The gallery may be the queries themselves (the same side).
        ``mirror=False``: no pair matched mirrored, whatever ``self.mirror`` says."""
        pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
        offset = len(query.keypoints[self.features[0]])
        joined = {name: query.keypoints[name] + gallery.keypoints[name] for name in self.features}
        flipped = (self.mirrored(query.orientation[pairs[:, 0]], gallery.orientation[pairs[:, 1]])
                   if mirror else np.zeros(len(pairs), bool))
        mirrored = None
        if flipped.any():
            unique, positions = np.unique(pairs[flipped, 0], return_inverse=True)
            found = self.keypoints(query.images.iloc[unique], None if query.regions is None else
                                   [query.regions[i] for i in unique], description, mirrored=True)
            mirrored = _MirroredQueries(found, flipped, positions)
        return self._pair_scores(joined, pairs, offset, description, mirrored)

    def _pair_scores(self, keypoints: dict[str, Sequence[Keypoints]], pairs: np.ndarray,
                     offset: int, description: str, mirrored: _MirroredQueries | None
                     ) -> dict[str, np.ndarray]:
        """Each matcher's scores of ``pairs`` (query row, gallery row: at ``offset`` in the
        joined ``keypoints``), mirrored queries appended after them."""
        columns: dict[str, np.ndarray] = {}
        flipped = np.zeros(len(pairs), bool) if mirrored is None else mirrored.flipped
        pairs = pairs + np.array([0, offset])
        for name, matcher in self.matchers.items():
            every, scored = keypoints[name], pairs
            if flipped.any():  # mirrored queries appended after the other keypoints
                every = every + mirrored.keypoints[name]
                extra = pairs[flipped].copy()
                extra[:, 0] = len(keypoints[name]) + mirrored.positions
                scored = np.concatenate([pairs, extra])
            found = score_pairs(matcher, every, scored, ransac=self.ransac,
                                progress=self.progress, description=f"{description}: {name}",
                                pool=self.pool,
                                scorer=functools.partial(MatchingWorker, name, self.batch_size,
                                                         None, matcher.device.type))
            self.pairs_per_second[name] = len(scored) / max(float(found["seconds"]), 1e-9)
            for key in (*PAIR_SCORES, *KEYPOINT_COUNTS):
                columns[f"{name}:{key}"] = found[key][:len(pairs)]
                if flipped.any():  # NaN where the pair was not matched mirrored
                    columns[f"{name}:mirrored:{key}"] = np.full(len(pairs), np.nan, np.float32)
                    columns[f"{name}:mirrored:{key}"][flipped] = found[key][len(pairs):]
            columns[name] = kept_score(columns, name, self.pair_score)
        return columns


def extracted_keypoints(extractors: dict[str, KeypointExtractor], images: pd.DataFrame,
                        regions: Sequence[Region | None] | None, description: str,
                        mirrored: bool = False) -> dict[str, Sequence[Keypoints]]:
    """Each matcher's keypoints of ``images`` (``mirrored``: of the images flipped), by its
    ``extractors``: each extractor run (or its cache read) once, whatever matchers share it."""
    paths = images["filepath" if "filepath" in images.columns else "path"].astype(str).tolist()
    if mirrored:
        description = f"{description} mirrored"
    found: dict[int, Sequence[Keypoints]] = {}
    for name, extractor in extractors.items():
        if id(extractor) not in found:
            found[id(extractor)] = extractor(paths, regions, f"{description}: {name} keypoints",
                                             mirrored)
    return {name: found[id(extractor)] for name, extractor in extractors.items()}


def kept_score(columns: dict[str, np.ndarray], matcher: str, pair_score: str) -> np.ndarray:
    """``matcher``'s ``pair_score`` of each pair from a :meth:`LocalScorer.score`'s detail
    ``columns``: the better of the pair as it is and mirrored (where it was matched mirrored)."""
    return np.fmax(columns[f"{matcher}:{pair_score}"],
                   columns.get(f"{matcher}:mirrored:{pair_score}", np.nan))


def without_evidence(columns: dict[str, np.ndarray], matcher: str) -> np.ndarray:
    """Which pairs of a :meth:`LocalScorer.score` have no local evidence for ``matcher``: a side
    of the pair (a blank, uniform or tiny photo) has no keypoint at all, as it is and, where it
    was matched mirrored too, mirrored (NaN counts: not matched so). A scorer that gives no
    keypoint counts has evidence wherever it scored."""
    first, second = (columns.get(f"{matcher}:{key}") for key in KEYPOINT_COUNTS)
    if first is None:
        return np.zeros(len(columns[matcher]), bool)
    lacking = (first == 0) | (second == 0)
    mirrored = [columns.get(f"{matcher}:mirrored:{key}") for key in KEYPOINT_COUNTS]
    if mirrored[0] is not None:
        lacking &= ~((mirrored[0] > 0) & (mirrored[1] > 0))
    return lacking


def keypoints_per_image(columns: dict[str, np.ndarray], matchers: Sequence[str],
                        pairs: np.ndarray, sides: Sequence[int] = (0, 1)) -> pd.Series:
    """The most keypoints any of ``matchers`` found on each image (row) of ``pairs``' ``sides``
    (0: the query's, 1: the gallery's; one side of a :meth:`LocalScorer.score`), from its
    counts: 0 for an image no detector found anything on."""
    pairs = np.asarray(pairs, np.int64).reshape(-1, 2)
    rows = np.concatenate([pairs[:, side] for side in sides])
    counts = np.concatenate([np.max([np.asarray(columns[f"{name}:{KEYPOINT_COUNTS[side]}"])
                                     for name in matchers], axis=0) for side in sides])
    return pd.Series(counts).groupby(rows).max().astype(np.int64)
