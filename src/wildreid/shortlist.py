"""The first stage of local re-ranking: which database photos each query is matched with.

A first stage is fitted on the gallery (``fit(gallery, species)``: a
:class:`~wildreid.scorers.Side` — images, global descriptors, regions, keypoints — and each
photo's species) and gives each query its shortlist (``search(queries, species, size, views)``:
per query, up to ``size`` gallery rows of its species, best first, -1 pads; ``views``: per query
the orientations it is compared with, ``None`` for all). :class:`~wildreid.rerank.LocalReranking`
takes one as its ``first_stage`` and calls it the same way for the database's pseudo-queries
(calibration) and for the queries, so a new first stage (aggregated local descriptors, a
fine-tuned descriptor) is a class with these two methods, measured by its recall of the
individual (``python benchmarks first-stage-recall``).

Three first stages:

- :class:`CosineShortlist`: the global descriptors' cosine (the default);
- :class:`VladShortlist`: that cosine plus the cosine of VLADs of the photos' local descriptors
  (the keypoints the local stage computes anyway): a photo's pattern, aggregated into one vector;
- :class:`ShortlistSelection`: per species, whichever of those finds the individual more often
  on pseudo-splits of the gallery, the cosine unless another wins by more than two standard
  errors.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator, clone

from wildreid.metrics import STANDARD_ERRORS, open_set_score, paired_gain
from wildreid.pseudo_queries import pseudo_split, sightings_of
from wildreid.ranking import nearest_images
from wildreid.scorers import Side
from wildreid.vlad import CODEBOOK_SAMPLE, Vlad


class CosineShortlist(BaseEstimator):
    """The global descriptors' cosine: each query's most similar gallery photos of its species
    (exact, or approximate above :data:`~wildreid.ann.APPROXIMATE_ABOVE` photos of one species,
    the index kept in ``index_dir`` between runs and in memory between calls)."""

    def __init__(self, index_dir: str | Path | None = None):
        self.index_dir = index_dir

    def fit(self, gallery: Side, species: np.ndarray) -> CosineShortlist:
        self.features_ = np.asarray(gallery.features, np.float32)
        self.species_ = np.asarray(species, dtype=object)
        self.views_ = gallery.orientation
        # A memo, not learned state: the approximate indexes of very large species, built when
        # a search first needs one.
        self._indexes: dict = {}
        return self

    def search(self, queries: Side, species: np.ndarray, size: int | None,
               views: Sequence[frozenset | None] | None = None) -> np.ndarray:
        """Per query, the rows of its ``size`` most similar gallery photos (``None``: every
        one of its species), best first; -1 pads."""
        shortlist, _ = nearest_images(self.features_, self.species_, queries.features, species,
                                      size or len(self.features_), self._indexes,
                                      self.index_dir, self.views_, views)
        return shortlist


class VladShortlist(BaseEstimator):
    """The global cosine plus ``weight`` times the cosine of the photos' VLADs
    (:class:`~wildreid.vlad.Vlad`) of their local descriptors by the keypoint method
    ``features`` (``None``: the first the gallery's side holds), one codebook of ``clusters``
    centres per species fitted on its gallery photos. A photo without keypoints has the zero
    VLAD: its global cosine alone places it; a species whose photos hold fewer descriptors
    than ``clusters`` is shortlisted by the cosine alone.

    After ``fit``: ``features_`` (the keypoint method read), ``codebooks_`` (per species its
    fitted :class:`~wildreid.vlad.Vlad`, ``None`` where it had too few descriptors) and
    ``vectors_`` (per gallery photo its global descriptor beside its VLAD times the square
    root of ``weight``, so that one dot product is the cosine plus ``weight`` times the VLADs'
    cosine). A query without a species (compared with every gallery photo) has no VLAD part
    where the gallery has species: its codebook is not theirs."""

    def __init__(self, features: str | None = None, clusters: int = 64, weight: float = 1.0,
                 seed: int = 0):
        self.features = features
        self.clusters = clusters
        self.weight = weight
        self.seed = seed

    def fit(self, gallery: Side, species: np.ndarray) -> VladShortlist:
        found = gallery.keypoints or {}
        self.features_ = self.features or next(iter(found), None)
        if self.features_ not in found:
            raise ValueError(f"the VLAD first stage reads {self.features_ or 'local'} keypoints, "
                             f"which the gallery lacks (it holds {sorted(found) or 'none'}): "
                             "give it the local stage's keypoint method")
        self.species_ = np.asarray(species, dtype=object)
        self.views_ = gallery.orientation
        keypoints = found[self.features_]
        rng = np.random.default_rng(self.seed)
        self.codebooks_ = {}
        for key in dict.fromkeys(self.species_):
            rows = np.flatnonzero(self.species_ == key)
            per_photo = math.ceil(CODEBOOK_SAMPLE / len(rows))
            sample = [_sampled(keypoints[row].descriptors, per_photo, rng) for row in rows]
            if sum(len(part) for part in sample) < self.clusters:
                self.codebooks_[key] = None
                continue
            self.codebooks_[key] = Vlad(self.clusters, seed=self.seed).fit(sample)
        self.vectors_ = self._vectors(gallery, self.species_)
        self._indexes: dict = {}  # a memo, as the cosine first stage's
        return self

    def _vectors(self, side: Side, species: np.ndarray) -> np.ndarray:
        """Each photo's global descriptor beside its weighted VLAD (its species' codebook)."""
        fitted = [book for book in self.codebooks_.values() if book is not None]
        width = fitted[0].centres_.size if fitted else 0
        vlads = np.zeros((len(species), width), np.float32)
        keypoints = side.keypoints[self.features_]
        for key in dict.fromkeys(species):
            book = self.codebooks_.get(key)
            if book is None:
                continue  # a species without a codebook: its cosine alone
            rows = np.flatnonzero(species == key)
            vlads[rows] = book.transform([keypoints[row].descriptors for row in rows])
        # Both sides carry the square root, so that their dot product weighs the VLAD cosine
        # by ``weight`` itself.
        return np.hstack([np.asarray(side.features, np.float32),
                          np.sqrt(self.weight) * vlads])

    def search(self, queries: Side, species: np.ndarray, size: int | None,
               views: Sequence[frozenset | None] | None = None) -> np.ndarray:
        """As :meth:`CosineShortlist.search`, by the summed cosines."""
        species = np.asarray(species, dtype=object)
        vectors = self._vectors(queries, species)
        if any(key is not None for key in self.codebooks_):
            # Compared with every species: VLADs of different codebooks do not compare.
            vectors[np.array([key is None for key in species], bool),
                    queries.features.shape[1]:] = 0
        shortlist, _ = nearest_images(self.vectors_, self.species_, vectors, species,
                                      size or len(self.vectors_), self._indexes, None,
                                      self.views_, views)
        return shortlist


def _sampled(descriptors: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """At most ``count`` of one photo's descriptors, drawn without replacement."""
    if len(descriptors) <= count:
        return descriptors
    return descriptors[rng.choice(len(descriptors), count, replace=False)]


def default_candidates() -> dict[str, BaseEstimator]:
    """The first stages :class:`ShortlistSelection` tries by default, the first its default."""
    return {"cosine": CosineShortlist(), "cosine+vlad": VladShortlist()}


class ShortlistSelection(BaseEstimator):
    """Per species, the first stage among ``candidates`` (name -> unfitted first stage; ``None``:
    :func:`default_candidates`) whose shortlist of ``size`` most often holds a photo of the
    query's individual — of its orientation where both photos have one, since a local matcher
    cannot match the other flank — measured on ``splits`` pseudo-splits of the gallery (whole
    sightings of known identities held out as queries, as the local stage's calibration holds
    them out). Recall is balanced over identities; the first candidate is kept unless another
    beats it by more than :data:`~wildreid.metrics.STANDARD_ERRORS` standard errors (paired
    bootstrap over identities), the best such one otherwise.

    After ``fit``: ``recall_`` (per species, each candidate's recall, its gain over the first
    and the gain's standard error, and the pseudo-queries measured), ``chosen_`` (per species
    the candidate's name), ``stages_`` (the chosen candidates fitted on the whole gallery) and
    ``seconds_`` (what the fit took: the first stage's share of a run).
    Search goes to each query's species' choice. (Recall is measured with every orientation
    searched and the query's own flank wanted: the local stage's default. With
    ``orientation="same"`` or a ``mirror``, what the matcher can use differs a little from what
    is counted.)"""

    def __init__(self, candidates: dict[str, BaseEstimator] | None = None, size: int = 100,
                 splits: int = 3, seed: int = 0):
        self.candidates = candidates
        self.size = size
        self.splits = splits
        self.seed = seed

    def fit(self, gallery: Side, species: np.ndarray) -> ShortlistSelection:
        started = time.perf_counter()
        candidates = self.candidates or default_candidates()
        names = list(candidates)
        species = np.asarray(species, dtype=object)
        # Identities are compared within a species: the same name in two species is two animals.
        identities = np.array([f"{key}\0{name}" for key, name in
                               zip(species, gallery.images["identity"].astype(str))], dtype=object)
        sightings = sightings_of(gallery.images)
        rng = np.random.default_rng(self.seed)
        asked, hits = [], {name: [] for name in names}
        for _ in range(self.splits):
            split = pseudo_split(identities, rng, sightings=sightings)
            if split is None:
                break
            queries = split.queries[~split.unknown]
            asked.append(queries)
            for name in names:
                stage = clone(candidates[name]).fit(gallery.subset(split.reference),
                                                    species[split.reference])
                shortlist = stage.search(gallery.subset(queries), species[queries], self.size)
                hits[name].append(_found(shortlist, queries, split.reference, identities,
                                         gallery.orientation))
        asked = np.concatenate(asked) if asked else np.zeros(0, np.int64)
        found = {name: np.concatenate(parts) if parts else np.zeros(0, bool)
                 for name, parts in hits.items()}
        self.recall_, self.chosen_ = {}, {}
        for key in dict.fromkeys(species):
            rows = np.flatnonzero(species[asked] == key)
            truth = identities[asked[rows]]
            unknown = np.zeros(len(rows), bool)  # every pseudo-query here is of a known identity
            measured = {}
            for name in names:
                recall = open_set_score(found[name][rows], truth, unknown, closed_set=True)
                gain, error = paired_gain(found[name][rows], found[names[0]][rows], truth,
                                          unknown, closed_set=True, seed=self.seed)
                measured[name] = {"recall": recall, "gain": gain, "standard_error": error,
                                  "queries": len(rows)}
            winners = [name for name in names[1:] if len(rows)
                       and measured[name]["gain"] > STANDARD_ERRORS
                       * measured[name]["standard_error"]]
            self.recall_[key] = measured
            self.chosen_[key] = max(winners, key=lambda name: measured[name]["gain"],
                                    default=names[0])
        self.stages_ = {name: clone(candidates[name]).fit(gallery, species)
                        for name in dict.fromkeys(self.chosen_.values())}
        self.seconds_ = time.perf_counter() - started
        return self

    def partial_fit(self, gallery: Side, species: np.ndarray) -> ShortlistSelection:
        """The chosen first stages fitted again on a grown ``gallery`` (photos added to it),
        the choice kept: what the calibration and thresholds were fitted with."""
        self.stages_ = {name: clone(stage).fit(gallery, species)
                        for name, stage in self.stages_.items()}
        return self

    def search(self, queries: Side, species: np.ndarray, size: int | None,
               views: Sequence[frozenset | None] | None = None) -> np.ndarray:
        """As :meth:`CosineShortlist.search`, each query by its species' chosen first stage."""
        species = np.asarray(species, dtype=object)
        # A species the gallery lacks has nothing to find in any of them: any stage says so.
        chosen = np.array([self.chosen_.get(key, next(iter(self.stages_))) for key in species],
                          dtype=object)
        parts = {}
        for name in dict.fromkeys(chosen):
            rows = np.flatnonzero(chosen == name)
            parts[name] = (rows, self.stages_[name].search(
                queries.subset(rows), species[rows], size,
                None if views is None else [views[row] for row in rows]))
        width = max((part.shape[1] for _, part in parts.values()), default=size or 0)
        shortlist = np.full((len(species), width), -1, np.int64)
        for rows, part in parts.values():
            shortlist[rows, :part.shape[1]] = part
        return shortlist


def _found(shortlist: np.ndarray, queries: np.ndarray, reference: np.ndarray,
           identities: np.ndarray, views: np.ndarray) -> np.ndarray:
    """Per query, whether its shortlist (rows of ``reference``) holds a photo of its identity
    of its orientation where both have one; a query whose reference holds no such photo (only
    the other flank) counts any photo of its identity."""
    found = np.zeros(len(queries), bool)
    for row, query in enumerate(queries):
        same = identities[reference] == identities[query]
        seen = views[reference]
        facing = same & ((seen == None) | (views[query] is None)  # noqa: E711 (elementwise)
                         | (seen == views[query]))
        wanted = facing if facing.any() else same
        listed = shortlist[row][shortlist[row] >= 0]
        found[row] = bool(wanted[listed].any())
    return found
