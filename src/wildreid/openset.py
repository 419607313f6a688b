"""The open-set decision: answer ``new_individual`` when the best identity scores below a threshold.

Thresholds are fitted from the database alone, since query labels never exist: some identities are
held out entirely (pseudo-unknowns), some images of the others are held out (pseudo-known
queries; whole sightings where the metadata gives dates, as real queries come), the rest forms a
pseudo-database. Per species, the threshold maximising
sqrt(BAKS x BAUS) on these pseudo-queries is kept, averaged over resamples of their identities
(bagged), since one draw of held-out identities moves it by chance.

One door for every scorer: :meth:`OpenSetDecision.from_pseudo_queries` fits the thresholds from
any table of pseudo-queries and their best identity's score (the cosine's in
:meth:`OpenSetDecision.fit`, the fused local scores' in :mod:`wildreid.rerank`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from wildreid.data import NEW_INDIVIDUAL
from wildreid.metrics import best_threshold, threshold_curve
from wildreid.per_species import species_keys
from wildreid.pseudo_queries import pseudo_split
from wildreid.ranking import IdentityIndex


def pseudo_query_threshold(true_identity, top_identity, top_score, unknown
                           ) -> tuple[float, pd.DataFrame]:
    """The threshold maximising sqrt(BAKS x BAUS) over pseudo-queries (their true identity, best
    identity and its score, whether their identity was held out), and the curve it was read
    from; ``ValueError`` unless both known and unknown pseudo-queries are there."""
    unknown = np.asarray(unknown, dtype=bool)
    if unknown.all() or not unknown.any():
        raise ValueError("pseudo-queries of both known and unknown identities are needed")
    curve = threshold_curve(true_identity, top_identity, top_score, unknown)
    threshold, _ = best_threshold(curve)
    return threshold, curve


#: Resamples of the pseudo-queries' identities a bagged threshold is the mean over.
BAGGING_DRAWS = 50


def resampled_thresholds(true_identity, top_identity, top_score, unknown,
                         draws: int = BAGGING_DRAWS, seed: int = 0) -> np.ndarray:
    """The thresholds :func:`pseudo_query_threshold` fits on ``draws`` resamples of the
    pseudo-queries' identities (drawn with replacement; one drawn twice counts as two), resamples
    without both known and unknown pseudo-queries passed over."""
    true_identity = np.asarray(true_identity, dtype=object).astype(str)
    top_identity = np.asarray(top_identity, dtype=object).astype(str)
    top_score, unknown = np.asarray(top_score, dtype=float), np.asarray(unknown, dtype=bool)
    names = np.unique(true_identity)
    members = {name: np.flatnonzero(true_identity == name) for name in names}
    rng = np.random.default_rng(seed)
    found = []
    for _ in range(draws if len(names) else 0):
        picked = rng.choice(names, len(names), replace=True)
        rows = np.concatenate([members[name] for name in picked])
        if unknown[rows].all() or not unknown[rows].any():
            continue
        # Each draw of an identity is an identity of its own (BAKS averages over identities).
        copy = np.repeat([f"{number}:" for number in range(len(picked))],
                         [len(members[name]) for name in picked])
        threshold, _ = pseudo_query_threshold(np.char.add(copy, true_identity[rows]),
                                              np.char.add(copy, top_identity[rows]),
                                              top_score[rows], unknown[rows])
        found.append(threshold)
    return np.array(found, dtype=float)


def bagged_threshold(true_identity, top_identity, top_score, unknown,
                     draws: int = BAGGING_DRAWS, seed: int = 0) -> float:
    """The mean of :func:`resampled_thresholds` (the finite ones): the ``new_individual``
    threshold fitted on pseudo-queries (their true identity, best identity and its score,
    whether their identity was held out); ``ValueError`` unless both known and unknown
    pseudo-queries are there.

    The best plateau of sqrt(BAKS x BAUS) over a few hundred pseudo-queries moves with which
    identities happen to be held out; averaging over resamples steadies it without scoring a
    pair more. Chosen against the plain fit (:func:`pseudo_query_threshold`) on simulated
    protocols of development photos blind to both benchmarks
    (docs/decisions/0006-open-set-threshold.md). The plain fit stands where no
    resample gives a finite threshold (and raises the ``ValueError``)."""
    found = resampled_thresholds(true_identity, top_identity, top_score, unknown, draws, seed)
    found = found[np.isfinite(found)]
    if len(found):
        return float(np.mean(found))
    return pseudo_query_threshold(true_identity, top_identity, top_score, unknown)[0]


def fit_threshold(features: np.ndarray, identities, aggregation: str = "max", repeats: int = 5,
                  seed: int = 0, unknown_fraction: float = 0.3, query_fraction: float = 0.3,
                  sightings: np.ndarray | None = None) -> tuple[float, pd.DataFrame]:
    """The ``new_individual`` threshold of one species' database by cosine: pseudo-queries of
    ``repeats`` pseudo-splits (held out by ``sightings`` when given) pooled, the threshold
    maximising sqrt(BAKS x BAUS) over them bagged as local re-ranking's is
    (:func:`bagged_threshold`), and the pooled threshold curve.

    Bagging the pooled fit was measured on simulated protocols of development photos
    (docs/decisions/0006-open-set-threshold.md): +0.002 nyala, +0.003 lion, within
    noise each but never worse, so every scorer's threshold follows one rule."""
    identities = np.asarray(identities, dtype=object).astype(str)
    rng = np.random.default_rng(seed)
    true_ids, top_ids, top_scores, unknown = [], [], [], []
    for round_ in range(repeats):
        split = pseudo_split(identities, rng, unknown_fraction, query_fraction, sightings)
        if split is None:
            break
        index = IdentityIndex(features[split.reference], identities[split.reference],
                              aggregation=aggregation)
        names, scores = index.search(features[split.queries], k=1)
        # Identities are tagged by round so each round's identities are balanced separately.
        true_ids.extend(f"{round_}:{i}" for i in identities[split.queries])
        top_ids.extend(f"{round_}:{i}" for i in names[:, 0])
        top_scores.append(scores[:, 0])
        unknown.append(split.unknown)
    if not top_scores:
        raise ValueError("too few identities to fit a threshold (need 3 or more); "
                         "give a fixed threshold instead")
    pooled = (true_ids, top_ids, np.concatenate(top_scores), np.concatenate(unknown))
    _, curve = pseudo_query_threshold(*pooled)
    return bagged_threshold(*pooled), curve


def _species_groups(keys: np.ndarray) -> dict[str | None, np.ndarray]:
    """Rows per threshold key: every row pooled (``None``), then each species' own."""
    groups = {None: np.arange(len(keys))}
    groups.update({s: np.flatnonzero(keys == s) for s in dict.fromkeys(keys) if s is not None})
    return groups


_NO_POOLED = ("the database has too few identities (3 or more, with images to hold out) to fit "
              "the new_individual threshold; give --threshold FLOAT")


@dataclass
class OpenSetDecision:
    """Per-species thresholds (key ``None``: queries without species, or species without one)."""

    thresholds: dict[str | None, float]

    def threshold_for(self, species) -> float:
        key = None if species is None or pd.isna(species) else str(species)
        return self.thresholds.get(key, self.thresholds[None])

    def decide(self, top_identity, top_score, species) -> np.ndarray:
        limits = np.array([self.threshold_for(s) for s in species])
        return np.where(np.asarray(top_score) >= limits, np.asarray(top_identity, dtype=object),
                        NEW_INDIVIDUAL)

    @classmethod
    def fixed(cls, threshold: float) -> OpenSetDecision:
        return cls({None: float(threshold)})

    @classmethod
    def from_pseudo_queries(cls, true_identity, top_identity, top_score, unknown, species=None
                            ) -> OpenSetDecision:
        """Thresholds from any scorer's pseudo-queries (:func:`bagged_threshold`): each
        species' own where it has known and unknown ones, and one over them all (``None``)."""
        true_identity = np.asarray(true_identity, dtype=object)
        top_identity = np.asarray(top_identity, dtype=object)
        top_score, unknown = np.asarray(top_score), np.asarray(unknown, dtype=bool)
        thresholds: dict[str | None, float] = {}
        for key, rows in _species_groups(species_keys(species, len(true_identity))).items():
            try:
                thresholds[key] = bagged_threshold(
                    true_identity[rows], top_identity[rows], top_score[rows], unknown[rows])
            except ValueError:
                continue  # no known or no unknown pseudo-query here: the pooled one applies
        if None not in thresholds:
            raise ValueError(_NO_POOLED)
        return cls(thresholds)

    @classmethod
    def fit(cls, features: np.ndarray, identities, species=None, aggregation: str = "max",
            repeats: int = 5, seed: int = 0, sightings: np.ndarray | None = None
            ) -> OpenSetDecision:
        """Thresholds by cosine: each species' pseudo-queries drawn among its own images (held
        out by ``sightings`` when given: :func:`pseudo_split`)."""
        identities = np.asarray(identities, dtype=object).astype(str)
        thresholds: dict[str | None, float] = {}
        for key, rows in _species_groups(species_keys(species, len(identities))).items():
            try:
                thresholds[key], _ = fit_threshold(
                    features[rows], identities[rows], aggregation, repeats=repeats, seed=seed,
                    sightings=None if sightings is None else sightings[rows])
            except ValueError:
                continue  # too few identities here: the pooled threshold applies
        if None not in thresholds:
            raise ValueError(_NO_POOLED)
        return cls(thresholds)
