"""``Identifier``: the estimator users call — ``fit`` on the database, ``predict`` on queries."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, clone

from wildreid.data import NEW_INDIVIDUAL
from wildreid.defaults import DEFAULT_CACHE_DIR
from wildreid.distributed import RayPool
from wildreid.features import FeatureExtractor
from wildreid.grouping import NewIndividualGrouping, name_groups
from wildreid.isolation import ISOLATION_MODES, Isolator, Segmenter
from wildreid.models import DEFAULT_MODEL, create_descriptor, parse_ensemble
from wildreid.openset import OpenSetDecision
from wildreid.per_species import by_species
from wildreid.pseudo_queries import sightings_of
from wildreid.ranking import IdentityIndex, index_dir, stacked_descriptors
from wildreid.rerank import LocalReranking, check_matchers
from wildreid.routing import SpeciesRouter, blank_species

#: Named configurations of :class:`Identifier` (``wildreid identify --preset``).


def _filepaths(images: pd.DataFrame) -> list[str]:
    column = "filepath" if "filepath" in images.columns else "path"
    if column not in images.columns:
        raise ValueError("images need a 'filepath' or 'path' column")
    return images[column].astype(str).tolist()


def _image_ids(images: pd.DataFrame) -> np.ndarray:
    """Each image's ``image_id`` (its file path where there is none)."""
    ids = images["image_id"] if "image_id" in images.columns else pd.Series(_filepaths(images))
    return ids.astype(str).to_numpy(dtype=object)


def _species(images: pd.DataFrame):
    return images["species"].tolist() if "species" in images.columns else None


def decided(candidates: pd.DataFrame, decision: OpenSetDecision) -> pd.DataFrame:
    """Submission rows ``image_id, identity, score, species``: each query's best candidate, or
    ``new_individual`` under its species' threshold (``decision``)."""
    best = candidates[candidates["rank"] == 1]
    identity = decision.decide(best["identity"], best["score"], best["species"])
    return pd.DataFrame({"image_id": best["image_id"].to_numpy(), "identity": identity,
                         "score": best["score"].to_numpy(), "species": best["species"].to_numpy()})


def propose_new_individuals(queries: pd.DataFrame, answers: pd.DataFrame,
                            features: np.ndarray | None,
                            groups_of: Callable[[pd.DataFrame, np.ndarray | None, str | None],
                                                np.ndarray]) -> pd.DataFrame:
    """``answers`` (rows in the order of ``queries``) with each ``new_individual`` replaced by a
    proposed new individual, ``new_individual_<n>``, numbered over every species:
    ``groups_of(images, their descriptors or None, species)`` labels the new queries of one
    species."""
    answers = answers.copy()
    new = np.flatnonzero(answers["identity"].to_numpy() == NEW_INDIVIDUAL)
    if len(new) == 0:
        return answers
    # The species the answers were reached in (routed where the query had none).
    queries = queries.assign(species=answers["species"].to_numpy()) if (
        "species" in answers.columns) else queries
    species = np.array(_species(queries) or [None] * len(queries), dtype=object)[new]
    keys = np.array(["" if s is None or pd.isna(s) else str(s) for s in species], dtype=object)
    labels = np.empty(len(new), dtype=object)
    for key in dict.fromkeys(keys):
        members = np.flatnonzero(keys == key)
        rows = queries.iloc[new[members]]
        described = None if features is None else features[new[members]]
        found = groups_of(rows, described, key or None)
        labels[members] = [(key, int(label)) for label in found]
    answers.loc[answers.index[new], "identity"] = name_groups(pd.Series(labels)).to_numpy()
    return answers


class Identifier(BaseEstimator):
    """Open-set re-identification with a global descriptor.

    Parameters
    ----------
    model: a name from the model registry, a timm name, or a wildreid ``.pt`` checkpoint; or an
        ensemble ``A+B`` (weights ``A:0.7+B:0.3``): each model's embedding, L2-normalised and
        scaled by the square root of its weight, concatenated, so a cosine is the weighted mean
        of the models' cosines (each model cached apart). A dict gives one per species (key
        ``None``: the rest, and the species router's); images are only ever compared with
        images of their species, so each species' embeddings may differ in size (zero-padded).
    threshold: ``"auto"`` fits a per-species ``new_individual`` threshold on the database
        (pseudo-queries); a float applies that cosine threshold everywhere; ``None`` never answers
        ``new_individual`` (closed set).
    aggregation: identity score from its images' similarities, ``"max"`` or ``"mean"``.
    isolation: what the descriptor sees of each image: ``"none"`` (whole image), ``"crop"`` (the
        animal's box), ``"mask"`` (the box with the background filled); a dict gives it per species
        (key ``None``: the rest). Regions come from metadata ``bbox``/``mask`` columns, else from
        U²-Net-p (``segmenter_weights``: a local ``u2netp.onnx``; default: fetched once).
    reranking: the local re-ranking of each query's shortlist of database images
        (:class:`~wildreid.rerank.LocalReranking`: its matchers — ``aliked``, ``aliked-nn``,
        ``disk``, ``sift``, ``orb`` —, the shortlist, where keypoints are kept, how pair scores
        are calibrated and fused); ``None`` (the default): the global descriptor alone. Its
        settings are its own (``set_params(reranking__shortlist=50)`` reaches them, as in a
        scikit-learn pipeline); it runs with this identifier's ``device``, ``cache_dir``,
        ``workers``, ``progress``, ``seed`` and ``ray``, as a fitted copy (``reranking_``): the
        object given is never fitted.
    cluster_new: :meth:`predict` gives the queries answered ``new_individual`` proposed new
        individuals (``new_individual_1``...): clustered on the similarity that ranks candidates
        (:meth:`similarity`), cut as fitted on the database's pseudo-unknowns
        (:mod:`wildreid.grouping`).
    ray: run global description, isolation, keypoints and pair matching on a Ray cluster
        (``"local"``: one started on this machine; ``"auto"``: the cluster this machine is part
        of; or a head's address), same answers as in one process (:mod:`wildreid.distributed`).

    Queries without species (a blank ``species``) are given one by ``router_``
    (:class:`~wildreid.routing.SpeciesRouter`, fitted when the database has species): the
    species of their nearest database identities by the default model's descriptor.

    After ``fit``: ``index_`` (searchable database), ``decision_`` (thresholds per species),
    ``router_`` and, with ``cluster_new``, ``grouping_`` (the cut per species).
    """

    def __init__(self, model: str = DEFAULT_MODEL, *, weights: str | Path | None = None,
                 threshold: str | float | None = "auto", aggregation: str = "max",
                 device: str = "auto", batch_size: int = 64, workers: int | None = None,
                 cache_dir: str | Path | None = DEFAULT_CACHE_DIR, progress: bool = True,
                 isolation: str | dict[str | None, str] = "none",
                 segmenter_weights: str | Path | None = None,
                 reranking: LocalReranking | None = None, cluster_new: bool = False,
                 ray: str | None = None, seed: int = 0):
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
        self.reranking = reranking
        self.segmenter_weights = segmenter_weights
        self.cluster_new = cluster_new
        self.ray = ray
        self.seed = seed
        # Loaded networks, by everything they depend on: a changed parameter loads anew.
        self._loaded: dict[tuple, FeatureExtractor | Isolator] = {}

    def _check(self) -> None:
        """Parameters are checked where they are used (fit), as scikit-learn estimators do."""
        modes = dict(self.isolation) if isinstance(self.isolation, dict) else {None: self.isolation}
        for mode in modes.values():
            if mode not in ISOLATION_MODES:
                raise ValueError(f"unknown isolation {mode!r}; use one of {', '.join(ISOLATION_MODES)}")
        if self.reranking is not None:  # before the database is described: fail at once
            if not isinstance(self.reranking, LocalReranking):
                raise ValueError(f"reranking must be a LocalReranking (or None), not "
                                 f"{self.reranking!r}")
            check_matchers(self.reranking.features, self.reranking.cascade)
            from wildreid.local import create_local_features

            for name in dict.fromkeys(self.reranking.features):  # weights that cannot be had
                _ = create_local_features(name, device="cpu").weights_id

    def isolation_of(self, images: pd.DataFrame) -> np.ndarray:
        """The isolation mode of each image (by its species)."""
        return by_species(self.isolation, _species(images) or [None] * len(images), "none")

    def _models(self) -> dict[str | None, str]:
        models = dict(self.model) if isinstance(self.model, dict) else {None: self.model}
        models.setdefault(None, DEFAULT_MODEL)
        return models

    def model_of(self, images: pd.DataFrame) -> np.ndarray:
        """The model (or ensemble) that describes each image (by its species)."""
        return by_species(self.model, _species(images) or [None] * len(images), DEFAULT_MODEL)

    def extractor(self, isolation: str = "none", model: str | None = None) -> FeatureExtractor:
        """The feature extractor of ``model`` (one network, a member of an ensemble; default:
        the default model's first) on images isolated as ``isolation``; the network is loaded
        once per model."""
        members = [m for spec in self._models().values() for m in parse_ensemble(spec)]
        model = parse_ensemble(self._models()[None])[0][0] if model is None else model
        if len({name for name, _ in members}) > 1 and self.weights is not None:
            raise ValueError("weights= applies to one model, not to an ensemble or to models "
                             "by species")
        network = ("network", model, str(self.weights))
        key = ("features", *network, isolation, str(self.device), self.batch_size, self.workers,
               str(self.cache_dir), self.progress, self.ray)
        if key not in self._loaded:
            if network not in self._loaded:  # one network for all the isolations it sees
                self._loaded[network] = create_descriptor(model, self.weights)
            self._loaded[key] = FeatureExtractor(
                self._loaded[network], device=self.device, batch_size=self.batch_size,
                workers=self.workers, cache_dir=self.cache_dir, progress=self.progress,
                isolation=isolation, pool=self._pool())
        return self._loaded[key]

    def _pool(self) -> RayPool | None:
        return None if self.ray is None else RayPool(self.ray)

    @property
    def isolator(self) -> Isolator:
        key = ("isolator", str(self.segmenter_weights), str(self.device), str(self.cache_dir),
               self.workers, self.progress, self.ray)
        if key not in self._loaded:
            self._loaded[key] = Isolator(
                functools.partial(Segmenter, self.segmenter_weights, device=self.device),
                cache_dir=self.cache_dir, workers=self.workers, progress=self.progress,
                pool=self._pool())
        return self._loaded[key]

    def describe(self, images: pd.DataFrame, description: str = "features",
                 model: str | None = None) -> np.ndarray:
        """L2-normalised global descriptors of ``images``, isolated as ``isolation`` says and
        described by their species' model, or by ``model`` for all (cached). Species whose
        models give shorter embeddings are zero-padded (norms and cosines unchanged)."""
        self._check()
        paths = np.array(_filepaths(images), dtype=object)
        modes = self.isolation_of(images)
        models = np.full(len(images), model, dtype=object) if model else self.model_of(images)
        parts = []
        for mode, spec in dict.fromkeys(zip(modes, models)):
            rows = np.flatnonzero((modes == mode) & (models == spec))
            regions = None
            if mode != "none":
                regions = self.isolator(images.iloc[rows], f"{description}: regions")
            members = parse_ensemble(spec)
            named = len(members) > 1 or len(set(self._models().values())) > 1
            parts.append((rows, np.concatenate([  # sqrt(weight): cosines add up weighted
                np.sqrt(weight) * self.extractor(mode, name)(
                    paths[rows].tolist(), f"{description}{f' ({name})' if named else ''}",
                    regions)
                for name, weight in members], axis=1).astype(np.float32)))
        width = max((part.shape[1] for _, part in parts), default=0)
        features = np.zeros((len(images), width), np.float32)
        for rows, part in parts:
            features[rows, :part.shape[1]] = part
        return features

    def _route(self, images: pd.DataFrame, description: str) -> pd.DataFrame:
        """``images`` with a species for each row that had none (``router_``), and columns
        ``species_source`` (``given``/``predicted``) and ``species_confidence``."""
        routed = images.copy()
        blank = blank_species(images)
        routed["species_source"] = np.where(blank, "predicted", "given")
        routed["species_confidence"] = np.where(blank, np.nan, 1.0)
        if getattr(self, "router_", None) is None or not blank.any():
            routed["species_source"] = np.where(blank, "none", "given")
            return routed
        species, confidence = self.router_.predict(self.describe(
            images.iloc[np.flatnonzero(blank)], f"{description}: species",
            self._models()[None]))
        column = routed["species"].astype(object) if "species" in routed.columns else pd.Series(
            [None] * len(routed), index=routed.index, dtype=object)
        column.iloc[np.flatnonzero(blank)] = species
        routed["species"] = column.to_numpy()
        routed.loc[routed.index[blank], "species_confidence"] = confidence
        return routed

    def fit(self, database: pd.DataFrame) -> Identifier:
        """Describe the database images (``filepath``/``path``, ``identity``, optional ``species``)
        and fit the open-set thresholds."""
        self._check()
        if "identity" not in database.columns or database["identity"].isna().any():
            raise ValueError("every database image needs an identity")
        features = self.describe(database, "database")
        identities = database["identity"].astype(str).to_numpy()
        species = _species(database)
        self.database_images_ = _image_ids(database)
        self.index_ = IdentityIndex(features, identities, species, self.aggregation,
                                    index_dir(self.cache_dir))
        self.database_ = (features, identities, None if species is None else np.asarray(
            species, dtype=object))
        self.router_ = None
        if species is not None and not blank_species(database).any():
            default = self._models()[None]
            same = (self.model_of(database) == default).all()  # else the default model's
            self.router_ = SpeciesRouter().fit(
                features if same else self.describe(database, "database: species", default),
                identities, species)
        self.reranking_ = None
        if self.reranking is not None:  # a copy, run as this identifier runs
            self.reranking_ = clone(self.reranking).set_params(
                device=self.device, cache_dir=self.cache_dir, workers=self.workers,
                progress=self.progress, seed=self.seed, ray=self.ray).fit(
                    database, features, self.isolator)
        if self.threshold == "auto" and self.reranking_ is not None:
            self.decision_ = self.reranking_.decision_
        elif self.threshold == "auto":
            self.decision_ = OpenSetDecision.fit(features, identities, species,
                                                 self.aggregation, seed=self.seed,
                                                 sightings=sightings_of(database))
        else:
            fixed = -np.inf if self.threshold is None else float(self.threshold)
            self.decision_ = OpenSetDecision.fixed(fixed)
        self.grouping_ = None
        if self.cluster_new:
            self.fit_grouping(database, features)
        return self

    def fit_grouping(self, database: pd.DataFrame, features: np.ndarray | None = None
                     ) -> Identifier:
        """Fit how new individuals are grouped (``grouping_``) on the pseudo-unknowns of the
        database this identifier was fitted on (``fit`` does it with ``cluster_new``); raises
        ``ValueError`` when too few identities have two photos or more."""
        features = self.describe(database, "database") if features is None else features
        self.grouping_ = NewIndividualGrouping.fit(
            lambda rows: self.similarity(database.iloc[rows], features[rows]),
            database["identity"].astype(str).to_numpy(), _species(database), seed=self.seed)
        return self

    def similarity(self, images: pd.DataFrame, features: np.ndarray | None = None) -> np.ndarray:
        """Pairwise similarity of ``images`` (one species) as candidates are ranked: the cosine
        of global descriptors, or with local re-ranking their fused, calibrated scores
        (:meth:`wildreid.rerank.LocalReranking.similarity`). ``features``: the images'
        descriptors when already at hand."""
        features = self.describe(images, "similarity") if features is None else features
        if self.reranking_ is None:
            return np.asarray(features, np.float32) @ np.asarray(features, np.float32).T
        return self.reranking_.similarity(images, features, self.isolator)

    def group_new(self, queries: pd.DataFrame, answers: pd.DataFrame,
                  features: np.ndarray | None = None) -> pd.DataFrame:
        """``answers`` (from :meth:`decide`, rows in the order of ``queries``) with each
        ``new_individual`` replaced by a proposed new individual, ``new_individual_<n>``: the
        new queries of each species clustered with the cut fitted on the database.
        ``features``: the queries' descriptors when at hand (else described again)."""
        if getattr(self, "grouping_", None) is None:
            raise RuntimeError("fit with cluster_new=True before grouping new individuals")
        return propose_new_individuals(
            queries, answers, features,
            lambda rows, described, key: self.grouping_.predict(
                self.similarity(rows, described), key))

    def partial_fit(self, database: pd.DataFrame) -> Identifier:
        """Add images of known identities (new or existing) to a fitted identifier without
        fitting again: only they are described (and, with local re-ranking, their keypoints
        found), the index grows; the open-set thresholds and the re-ranking's calibration stay
        those of the last :meth:`fit` (fit again once the database has changed much)."""
        if not hasattr(self, "index_"):
            return self.fit(database)
        if "identity" not in database.columns or database["identity"].isna().any():
            raise ValueError("every database image needs an identity")
        if database.empty:
            return self
        features, identities, species = self.database_
        added_species = _species(database)
        if (species is None) != (added_species is None):
            raise ValueError("species given for some database images and not for others")
        added = self.describe(database, "database")
        features = stacked_descriptors(features, added)
        if self.reranking_ is not None:
            self.reranking_.partial_fit(database, added, self.isolator)
        added_identities = database["identity"].astype(str).to_numpy()
        identities = np.concatenate([identities, added_identities])
        if species is not None:
            species = np.concatenate([species, np.asarray(added_species, dtype=object)])
        self.index_ = IdentityIndex(features, identities, species, self.aggregation,
                                    index_dir(self.cache_dir))
        self.database_ = (features, identities, species)
        self.database_images_ = np.concatenate([self.database_images_, _image_ids(database)])
        if self.router_ is not None and not blank_species(database).any():
            default = self._models()[None]
            seen = (added if (self.model_of(database) == default).all()
                    else self.describe(database, "database: species", default))
            self.router_ = SpeciesRouter(self.router_.neighbours).fit(
                np.concatenate([self.router_.features_, seen[:, :self.router_.features_.shape[1]]]),
                np.concatenate([self.router_.identities_, added_identities]),
                np.concatenate([self.router_.species_, np.asarray(added_species, dtype=object)]))
        return self

    def predict_candidates(self, queries: pd.DataFrame, k: int = 5) -> pd.DataFrame:
        """Long table ``image_id, species, rank, identity, score``: top-``k`` identities per query."""
        return self.candidates_and_descriptors(queries, k)[0]

    def candidates_and_descriptors(self, queries: pd.DataFrame, k: int = 5
                                   ) -> tuple[pd.DataFrame, np.ndarray]:
        """:meth:`predict_candidates`' table and the queries' global descriptors it was ranked
        on (what :meth:`group_new` groups new individuals by, without describing them again)."""
        if not hasattr(self, "index_"):
            raise RuntimeError("call fit(database) before predicting")
        queries = self._route(queries, "queries")
        features = self.describe(queries, "queries")
        species = _species(queries)
        keypoints = None
        if self.reranking_ is not None:
            names, scores, rows, keypoints = self.reranking_.rank(queries, features,
                                                                  self.isolator, k=k)
        else:
            names, scores, rows = self.index_.search(features, species, k=k, images=True)
        database_ids = self.database_images_
        best_images = np.where(rows >= 0, database_ids[np.maximum(rows, 0)], "")
        image_ids = _image_ids(queries)
        species_column = np.asarray(species if species is not None else [None] * len(queries),
                                    dtype=object)
        table = pd.DataFrame({
            "image_id": np.repeat(image_ids, k),
            "species": np.repeat(species_column, k),
            "rank": np.tile(np.arange(1, k + 1), len(queries)),
            "identity": names.ravel(),
            "score": scores.ravel(),
            # The database image whose pair gave the score: what a drawn match must show.
            "image": best_images.ravel(),
            "species_source": np.repeat(queries["species_source"].to_numpy(), k),
            "species_confidence": np.repeat(queries["species_confidence"].to_numpy(), k),
            # The query's most keypoints by any local matcher: 0 means it was judged by its
            # global cosine alone (a blank, uniform or tiny photo).
            **({"query_keypoints": np.repeat(keypoints, k)} if keypoints is not None else {}),
        })
        return table[table["identity"] != ""].reset_index(drop=True), features

    def decide(self, candidates: pd.DataFrame) -> pd.DataFrame:
        """Submission rows ``image_id, identity, score, species`` from ranked candidates."""
        return decided(candidates, self.decision_)

    def predict(self, queries: pd.DataFrame) -> pd.DataFrame:
        """For each query: the database identity, or ``new_individual`` (with ``cluster_new``:
        a proposed ``new_individual_<n>``), with its score."""
        candidates, features = self.candidates_and_descriptors(queries, k=1)
        answers = self.decide(candidates)
        return self.group_new(queries, answers, features) if self.cluster_new else answers
