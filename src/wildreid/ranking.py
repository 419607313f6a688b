"""Rank database identities for each query by cosine similarity of global descriptors.

Queries are compared only with database images of their own species (all of them when the query's
species is blank). Similarities are computed in chunks of queries and reduced to one score per
identity at once, so a 100k-image database never needs the full query x database matrix. A
species with more than :data:`wildreid.ann.APPROXIMATE_ABOVE` images is searched through an
approximate index instead (``ann.py``; identity scores with ``max`` aggregation from each query's
nearest images), kept in ``index_dir`` when one is given (:func:`wildreid.ann.load_or_build`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from wildreid.ann import APPROXIMATE_ABOVE, ImageIndex, load_or_build

AGGREGATIONS = ("max", "mean")
_CHUNK_ELEMENTS = 1 << 24  # similarities held at once: 64 MB of float32


@dataclass
class _Gallery:
    features: np.ndarray  # database rows sorted by identity
    starts: np.ndarray  # first row of each identity
    counts: np.ndarray
    identities: np.ndarray
    rows: np.ndarray  # the database row of each gallery row
    index_dir: str | Path | None = None
    index: ImageIndex | None = None  # built on first search, for very large galleries only
    # The gallery row of each index row: the index holds database order, so that a database
    # grown by appending extends its saved index instead of building another.
    index_positions: np.ndarray | None = None
    index_origin: str = ""  # how the index was had: loaded, extended or built


    def approximate(self) -> ImageIndex | None:
        if self.index is None and len(self.features) > APPROXIMATE_ABOVE:
            order = np.argsort(self.rows, kind="stable")
            self.index, self.index_origin = load_or_build(self.features[order], self.index_dir)
            self.index_positions = order
        return self.index


def _gallery(features: np.ndarray, identities: np.ndarray, rows: np.ndarray,
             index_dir: str | Path | None) -> _Gallery:
    order = np.argsort(identities, kind="stable")
    sorted_ids = identities[order]
    names, starts, counts = np.unique(sorted_ids, return_index=True, return_counts=True)
    return _Gallery(np.ascontiguousarray(features[order]), starts, counts, names, rows[order],
                    index_dir)


def stacked_descriptors(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """``second``'s rows after ``first``'s; the narrower zero-padded to the wider width (a
    species whose model is wider came in: cosines with the zeros are those of the shared part)."""
    width = max(first.shape[1], second.shape[1])
    return np.concatenate([np.pad(part, ((0, 0), (0, width - part.shape[1])))
                           for part in (first, second)])


def index_dir(cache_dir: str | Path | None) -> Path | None:
    """Where approximate indexes are kept: beside the feature cache (none without a cache)."""
    return None if cache_dir is None else Path(cache_dir) / "indexes"


def _gallery_dir(folder: str | Path | None, species: str | None) -> Path | None:
    """One gallery's own folder of indexes; a species name never names a file (hashed)."""
    if folder is None:
        return None
    if species is None:
        return Path(folder) / "all-species"
    return Path(folder) / f"species-{hashlib.blake2b(species.encode(), digest_size=8).hexdigest()}"


def _species_key(value) -> str | None:
    return None if value is None or pd.isna(value) else str(value)


class IdentityIndex:
    """Database embeddings grouped by species and identity, searchable by query embeddings.

    ``aggregation`` turns image similarities into an identity score: ``max`` (the best image of
    the identity) or ``mean`` (the mean over its images). ``index_dir``: where the approximate
    indexes of very large species are kept between runs (``None``: built in memory only).
    """

    def __init__(self, features: np.ndarray, identities, species=None, aggregation: str = "max",
                 index_dir: str | Path | None = None):
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {AGGREGATIONS}, not {aggregation!r}")
        features = np.asarray(features, dtype=np.float32)
        identities = np.asarray(identities, dtype=object).astype(str)
        if len(features) != len(identities) or len(features) == 0:
            raise ValueError("need one identity per database feature row, and at least one row")
        species = (np.full(len(identities), None, dtype=object) if species is None
                   else np.array([_species_key(s) for s in species], dtype=object))
        self.aggregation = aggregation
        everything = np.arange(len(features))
        self._galleries = {None: _gallery(features, identities, everything,
                                          _gallery_dir(index_dir, None))}
        for name in {s for s in species if s is not None}:
            rows = species == name
            self._galleries[name] = _gallery(features[rows], identities[rows], everything[rows],
                                             _gallery_dir(index_dir, name))

    def _scores(self, gallery: _Gallery, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per query the score of every identity, and its similarity to every gallery image."""
        similarity = queries @ gallery.features.T
        if self.aggregation == "max":
            return np.maximum.reduceat(similarity, gallery.starts, axis=1), similarity
        return np.add.reduceat(similarity, gallery.starts, axis=1) / gallery.counts, similarity

    def search(self, queries: np.ndarray, species=None, k: int = 5, images: bool = False
               ) -> tuple[np.ndarray, ...]:
        """Top-``k`` identities and scores per query, best first (``""``/-inf pad short lists);
        with ``images``, also the database row of each identity's most similar image (-1 pads),
        the pair a match drawing should show."""
        queries = np.asarray(queries, dtype=np.float32)
        keys = ([None] * len(queries) if species is None
                else [_species_key(s) for s in species])
        names = np.full((len(queries), k), "", dtype=object)
        scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
        best = np.full((len(queries), k), -1, dtype=np.int64)
        for key in dict.fromkeys(keys):
            gallery = self._galleries.get(key)
            if gallery is None:
                raise ValueError(f"species {key!r} has no database images")
            rows = np.flatnonzero([q == key for q in keys])
            width = min(k, len(gallery.identities))
            if self.aggregation == "max" and gallery.approximate() is not None:
                names[rows, :width], scores[rows, :width], best[rows, :width] = (
                    _approximate_identities(gallery, queries[rows], width))
                continue
            step = max(1, _CHUNK_ELEMENTS // len(gallery.features))
            for begin in range(0, len(rows), step):
                chunk = rows[begin:begin + step]
                identity_scores, similarity = self._scores(gallery, queries[chunk])
                top = np.argpartition(-identity_scores, width - 1, axis=1)[:, :width]
                top_scores = np.take_along_axis(identity_scores, top, axis=1)
                order = np.argsort(-top_scores, axis=1, kind="stable")
                top = np.take_along_axis(top, order, axis=1)
                names[chunk, :width] = gallery.identities[top]
                scores[chunk, :width] = np.take_along_axis(top_scores, order, axis=1)
                if images:
                    best[chunk, :width] = _best_images(gallery, similarity, top)
        return (names, scores, best) if images else (names, scores)


def _best_images(gallery: _Gallery, similarity: np.ndarray, top: np.ndarray) -> np.ndarray:
    """The database row of the most similar image (the first on a tie) of each ``top`` identity
    (gallery indices) of each query, from the queries' ``similarity`` to every gallery image."""
    count = similarity.shape[1]
    similarity = np.nan_to_num(similarity, nan=-np.inf)  # a NaN never equals a maximum
    owner = np.repeat(np.arange(len(gallery.starts)), gallery.counts)
    best = np.maximum.reduceat(similarity, gallery.starts, axis=1)
    # Within each identity's run of rows, the first row reaching its maximum: the largest
    # of (count - position) among the rows that reach it.
    reached = np.where(similarity == best[:, owner], count - np.arange(count), 0)
    first = count - np.maximum.reduceat(reached, gallery.starts, axis=1)
    return gallery.rows[np.take_along_axis(first, top, axis=1)]


def _approximate_identities(gallery: _Gallery, queries: np.ndarray, k: int
                            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-``k`` identities by their best image among each query's nearest images (the
    approximate index; ``max`` aggregation), best first; short lists pad with ""/-inf."""
    depth = min(len(gallery.features), max(256, 16 * k))  # images fetched per query
    rows, similarities = gallery.index.search(queries, depth)
    rows = np.where(rows >= 0, gallery.index_positions[np.maximum(rows, 0)], -1)  # gallery rows
    owners = np.searchsorted(gallery.starts, np.maximum(rows, 0), side="right") - 1
    names = np.full((len(queries), k), "", dtype=object)
    scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    images = np.full((len(queries), k), -1, dtype=np.int64)
    for query in range(len(queries)):
        valid = rows[query] >= 0  # sorted best first: an identity's first hit is its best image
        _, first = np.unique(owners[query][valid], return_index=True)
        best = first[np.argsort(first, kind="stable")][:k]
        names[query, :len(best)] = gallery.identities[owners[query][valid][best]]
        scores[query, :len(best)] = similarities[query][valid][best]
        images[query, :len(best)] = gallery.rows[rows[query][valid][best]]
    return names, scores, images


def nearest_images(database: np.ndarray, database_species, queries: np.ndarray, query_species,
                   size: int, indexes: dict | None = None, index_dir: str | Path | None = None,
                   database_views: Sequence | None = None, query_views: Sequence | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """The shortlist: per query the ``size`` most similar database images of its species (all of
    them when fewer), as row indices into ``database`` (-1 pads) and cosines, best first. A
    species over :data:`~wildreid.ann.APPROXIMATE_ABOVE` images is searched approximately;
    ``indexes`` (a dict kept by the caller for the same ``database``) keeps those indexes between
    calls, ``index_dir`` between runs.

    ``query_views``: per query the set of database ``orientation`` values it is compared with
    (``None``: every image of its species); ``database_views`` the orientation of each database
    image (``None``: unknown, compared with every query). A query none of whose views the
    species has is compared with the whole species."""
    database = np.asarray(database, np.float32)
    queries = np.asarray(queries, np.float32)
    db_keys = np.array([_species_key(s) for s in (database_species if database_species is not None
                                                  else [None] * len(database))], dtype=object)
    q_keys = [_species_key(s) for s in (query_species if query_species is not None
                                        else [None] * len(queries))]
    db_views = (np.array(list(database_views), dtype=object) if database_views is not None
                else np.full(len(database), None, dtype=object))
    q_views = list(query_views) if query_views is not None else [None] * len(queries)
    groups = list(zip(q_keys, q_views))
    indices = np.full((len(queries), size), -1, np.int64)
    cosines = np.full((len(queries), size), -np.inf, np.float32)
    for key, views in dict.fromkeys(groups):
        rows = np.flatnonzero([group == (key, views) for group in groups])
        members = np.flatnonzero(db_keys == key) if key is not None else np.arange(len(database))
        if len(members) == 0:
            raise ValueError(f"species {key!r} has no database images")
        index_key = key
        if views is not None:
            shown = np.array([v is None or v in views for v in db_views[members]], bool)
            if shown.any():
                members = members[shown]
                index_key = f"{key}\0views:{','.join(sorted(views))}"
        width = min(size, len(members))
        if len(members) > APPROXIMATE_ABOVE:
            index = (indexes or {}).get(index_key) or load_or_build(
                database[members], _gallery_dir(index_dir, index_key))[0]
            if indexes is not None:
                indexes[index_key] = index
            found, similarity = index.search(queries[rows], width)
            indices[rows, :width] = np.where(found >= 0, members[np.maximum(found, 0)], -1)
            cosines[rows, :width] = similarity
            continue
        step = max(1, _CHUNK_ELEMENTS // len(members))
        for begin in range(0, len(rows), step):
            chunk = rows[begin:begin + step]
            similarity = queries[chunk] @ database[members].T
            top = np.argpartition(-similarity, width - 1, axis=1)[:, :width]
            top_scores = np.take_along_axis(similarity, top, axis=1)
            order = np.argsort(-top_scores, axis=1, kind="stable")
            indices[chunk, :width] = members[np.take_along_axis(top, order, axis=1)]
            cosines[chunk, :width] = np.take_along_axis(top_scores, order, axis=1)
    return indices, cosines
