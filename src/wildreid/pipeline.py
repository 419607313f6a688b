"""``Identifier``: the estimator users call — ``fit`` on the database, ``predict`` on queries."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from wildreid.defaults import DEFAULT_CACHE_DIR
from wildreid.features import FeatureExtractor
from wildreid.isolation import ISOLATION_MODES, Isolator, Segmenter, by_species
from wildreid.models import DEFAULT_MODEL, create_descriptor, parse_ensemble
from wildreid.openset import OpenSetDecision
from wildreid.ranking import IdentityIndex
from wildreid.rerank import LocalReranking

#: Named configurations of :class:`Identifier` (``wildreid identify --preset``).


def _filepaths(images: pd.DataFrame) -> list[str]:
    column = "filepath" if "filepath" in images.columns else "path"
    if column not in images.columns:
        raise ValueError("images need a 'filepath' or 'path' column")
    return images[column].astype(str).tolist()


def _species(images: pd.DataFrame):
    return images["species"].tolist() if "species" in images.columns else None


class Identifier:
    """Open-set re-identification with a global descriptor.

    Parameters
    ----------
    model: a name from the model registry, a timm name, or a wildreid ``.pt`` checkpoint; or an
        ensemble ``A+B`` (weights ``A:0.7+B:0.3``): each model's embedding, L2-normalised and
        scaled by the square root of its weight, concatenated, so a cosine is the weighted mean
        of the models' cosines (each model cached apart).
    threshold: ``"auto"`` fits a per-species ``new_individual`` threshold on the database
        (pseudo-queries); a float applies that cosine threshold everywhere; ``None`` never answers
        ``new_individual`` (closed set).
    aggregation: identity score from its images' similarities, ``"max"`` or ``"mean"``.
    isolation: what the descriptor sees of each image: ``"none"`` (whole image), ``"crop"`` (the
        animal's box), ``"mask"`` (the box with the background filled); a dict gives it per species
        (key ``None``: the rest). Regions come from metadata ``bbox``/``mask`` columns, else from
        U²-Net-p (``segmenter_weights``: a local ``u2netp.onnx``; default: fetched once).
    local: local matchers that re-rank each query's ``shortlist`` of database images
        (``aliked``, ``disk``, ``sift``; see :class:`wildreid.rerank.LocalReranking`; ``None``:
        every database image of the query's species), with ``max_keypoints`` per image
        detected on the animal's box resized to ``long_side`` pixels and kept on the animal
        (``keypoints_on="animal"``), or on the whole photo (``"image"``), or per species
        (``{"nyala": "animal", "lion": "image"}``, key ``None``: the rest); ``"auto"`` (the
        default) chooses per species on the database's pseudo-queries. Empty: global
        descriptor only. ``mirror``: also match queries flipped left-right, against database
        images of the mirror view (``"opposite"``: ``left`` vs ``right`` orientation) or all
        (``"all"``); ``"none"`` by default.

    After ``fit``: ``index_`` (searchable database) and ``decision_`` (thresholds per species).
    """

    def __init__(self, model: str = DEFAULT_MODEL, *, weights: str | Path | None = None,
                 threshold: str | float | None = "auto", aggregation: str = "max",
                 device: str = "auto", batch_size: int = 64, workers: int | None = None,
                 cache_dir: str | Path | None = DEFAULT_CACHE_DIR, progress: bool = True,
                 isolation: str | dict[str | None, str] = "none",
                 segmenter_weights: str | Path | None = None, local: Sequence[str] = (),
                 shortlist: int | None = 100, max_keypoints: int = 512, long_side: int = 512,
                 keypoints_on: str | dict[str | None, str] = "auto",
                 mirror: str = "none", keep_pair_scores: bool = False, seed: int = 0):
        self.model = model
        self.weights = weights
        self.threshold = threshold
        self.aggregation = aggregation
        self.device = device
        self.batch_size = batch_size
        self.workers = workers
        self.cache_dir = cache_dir
        self.progress = progress
        self.isolation = isolation
        self.local, self.shortlist = tuple(local), shortlist
        self.max_keypoints, self.long_side, self.keypoints_on = (max_keypoints, long_side,
                                                                 keypoints_on)
        self.mirror, self.keep_pair_scores = mirror, keep_pair_scores
        self.segmenter_weights = segmenter_weights
        self.seed = seed
        self._extractors: dict[tuple[str, str], FeatureExtractor] = {}
        self._isolator: Isolator | None = None
        for mode in self._modes().values():
            if mode not in ISOLATION_MODES:
                raise ValueError(f"unknown isolation {mode!r}; use one of {', '.join(ISOLATION_MODES)}")

    def _modes(self) -> dict[str | None, str]:
        modes = dict(self.isolation) if isinstance(self.isolation, dict) else {None: self.isolation}
        modes.setdefault(None, "none")
        return modes

    def isolation_of(self, images: pd.DataFrame) -> np.ndarray:
        """The isolation mode of each image (by its species)."""
        return by_species(self.isolation, _species(images) or [None] * len(images), "none")

    def extractor(self, isolation: str = "none", model: str | None = None) -> FeatureExtractor:
        """The feature extractor of ``model`` (one member of the ensemble; default: the only
        one) on images isolated as ``isolation``; the network is loaded once per model."""
        members = parse_ensemble(self.model)
        model = members[0][0] if model is None else model
        if len(members) > 1 and self.weights is not None:
            raise ValueError("weights= applies to one model, not to an ensemble")
        if (model, isolation) not in self._extractors:
            loaded = [e.descriptor for (name, _), e in self._extractors.items() if name == model]
            descriptor = loaded[0] if loaded else create_descriptor(model, self.weights)
            self._extractors[(model, isolation)] = FeatureExtractor(
                descriptor, device=self.device, batch_size=self.batch_size, workers=self.workers,
                cache_dir=self.cache_dir, progress=self.progress, isolation=isolation)
        return self._extractors[(model, isolation)]

    @property
    def isolator(self) -> Isolator:
        if self._isolator is None:
            self._isolator = Isolator(lambda: Segmenter(self.segmenter_weights, device=self.device),
                                      cache_dir=self.cache_dir, workers=self.workers,
                                      progress=self.progress)
        return self._isolator

    def describe(self, images: pd.DataFrame, description: str = "features") -> np.ndarray:
        """L2-normalised global descriptors of ``images``, isolated as ``isolation`` says (cached)."""
        paths = np.array(_filepaths(images), dtype=object)
        modes = self.isolation_of(images)
        features = None
        for mode in dict.fromkeys(modes):
            rows = np.flatnonzero(modes == mode)
            regions = None
            if mode != "none":
                regions = self.isolator(images.iloc[rows], f"{description}: regions")
            members = parse_ensemble(self.model)
            part = np.concatenate([  # sqrt(weight): cosines add up weighted, norms to 1
                np.sqrt(weight) * self.extractor(mode, name)(
                    paths[rows].tolist(), f"{description}{f' ({name})' if len(members) > 1 else ''}",
                    regions)
                for name, weight in members], axis=1).astype(np.float32)
            if features is None:
                features = np.empty((len(images), part.shape[1]), np.float32)
            features[rows] = part
        return features

    def fit(self, database: pd.DataFrame) -> Identifier:
        """Describe the database images (``filepath``/``path``, ``identity``, optional ``species``)
        and fit the open-set thresholds."""
        if "identity" not in database.columns or database["identity"].isna().any():
            raise ValueError("every database image needs an identity")
        features = self.describe(database, "database")
        identities = database["identity"].astype(str).to_numpy()
        species = _species(database)
        self.index_ = IdentityIndex(features, identities, species, self.aggregation)
        self.database_ = (features, identities, None if species is None else np.asarray(
            species, dtype=object))
        self.reranking_ = None
        if self.local:
            self.reranking_ = LocalReranking(
                self.local, self.shortlist, self.max_keypoints, self.long_side,
                keypoints_on=self.keypoints_on,
                device=self.device, cache_dir=self.cache_dir, workers=self.workers,
                progress=self.progress, seed=self.seed, mirror=self.mirror,
                keep_pair_scores=self.keep_pair_scores).fit(database, features, self.isolator)
        if self.threshold == "auto" and self.reranking_ is not None:
            self.decision_ = OpenSetDecision(self.reranking_.thresholds_)
        elif self.threshold == "auto":
            self.decision_ = OpenSetDecision.fit(features, identities, species,
                                                 self.aggregation, seed=self.seed)
        else:
            fixed = -np.inf if self.threshold is None else float(self.threshold)
            self.decision_ = OpenSetDecision.fixed(fixed)
        return self

    def partial_fit(self, database: pd.DataFrame) -> Identifier:
        """Add images of known identities (new or existing) to a fitted identifier without
        fitting again: only they are described, the index grows; the open-set thresholds stay
        those of the last :meth:`fit` (fit again once the database has changed much). Only for
        the global descriptor: local re-ranking calibrates on the whole database, so with
        ``local`` set this raises ``NotImplementedError`` (call ``fit``)."""
        if not hasattr(self, "index_"):
            return self.fit(database)
        if self.reranking_ is not None:
            raise NotImplementedError("local re-ranking is calibrated on the whole database: "
                                      "call fit with the grown database instead")
        if "identity" not in database.columns or database["identity"].isna().any():
            raise ValueError("every database image needs an identity")
        if database.empty:
            return self
        features, identities, species = self.database_
        added_species = _species(database)
        if (species is None) != (added_species is None):
            raise ValueError("species given for some database images and not for others")
        features = np.concatenate([features, self.describe(database, "database")])
        identities = np.concatenate([identities, database["identity"].astype(str).to_numpy()])
        if species is not None:
            species = np.concatenate([species, np.asarray(added_species, dtype=object)])
        self.index_ = IdentityIndex(features, identities, species, self.aggregation)
        self.database_ = (features, identities, species)
        return self

    def predict_candidates(self, queries: pd.DataFrame, k: int = 5) -> pd.DataFrame:
        """Long table ``image_id, species, rank, identity, score``: top-``k`` identities per query."""
        if not hasattr(self, "index_"):
            raise RuntimeError("call fit(database) before predicting")
        features = self.describe(queries, "queries")
        species = _species(queries)
        if self.reranking_ is not None:
            names, scores = self.reranking_.rank(queries, features, self.isolator, k=k)
        else:
            names, scores = self.index_.search(features, species, k=k)
        image_ids = (queries["image_id"] if "image_id" in queries.columns
                     else pd.Series(_filepaths(queries))).astype(str).to_numpy()
        species_column = np.asarray(species if species is not None else [None] * len(queries),
                                    dtype=object)
        table = pd.DataFrame({
            "image_id": np.repeat(image_ids, k),
            "species": np.repeat(species_column, k),
            "rank": np.tile(np.arange(1, k + 1), len(queries)),
            "identity": names.ravel(),
            "score": scores.ravel(),
        })
        return table[table["identity"] != ""].reset_index(drop=True)

    def decide(self, candidates: pd.DataFrame) -> pd.DataFrame:
        """Submission rows ``image_id, identity, score`` from ranked candidates."""
        best = candidates[candidates["rank"] == 1]
        identity = self.decision_.decide(best["identity"], best["score"], best["species"])
        return pd.DataFrame({"image_id": best["image_id"].to_numpy(), "identity": identity,
                             "score": best["score"].to_numpy()})

    def predict(self, queries: pd.DataFrame) -> pd.DataFrame:
        """For each query: the database identity, or ``new_individual``, with its score."""
        return self.decide(self.predict_candidates(queries, k=1))
