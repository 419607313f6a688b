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
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator

from wildreid.ranking import nearest_images
from wildreid.scorers import Side


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
