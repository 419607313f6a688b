"""Calibration and fusion (WildFusion, Čermák et al. 2024): each matcher's pair score becomes the
probability that the pair shows one individual (isotonic regression fitted on database pairs),
and the fused score is the mean of these probabilities (rule ``mean``) or, rule ``logistic``, a
logistic regression's over their log-odds (a stacker: it learns how much each matcher is worth on
the species, where the mean weighs all alike), fitted per species on cross-fitted calibrated
scores so that it learns from probabilities the calibration did not see the labels of. (A limit
of that: a score that tells nothing comes out of a cross-fitted isotonic map slightly
anti-correlated with the labels on some splits, and the stacker then gives it a negative weight;
in a simulation with 4,000 pairs, about one seed in four.)

A score may be missing (NaN): a local matcher's, where a photo of the pair has no keypoint at all
(blank, uniform, tiny). It is left out of its map's fit and of the mean, so such a pair is judged
by what remains (the global cosine), never as a pair that was matched and found different."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

#: How a species' calibrated scores are combined into its fused one: their mean (WildFusion) or a
#: logistic regression over their log-odds (a learned stacker).
FUSION_RULES = ("mean", "logistic")
#: Calibrated probabilities are clipped to this distance from 0 and 1 before their log-odds.
_CLIP = 1e-3
#: The stacker's inverse regularisation: weak, since it fits a weight per score (two or three)
#: on thousands of pairs, and true pairs are rare among them (a strong penalty on so few
#: weights flattens them to the prior).
_STACKER_C = 100.0


@dataclass
class Calibration:
    """One isotonic map per matcher, fitted on labelled pairs (same individual = 1)."""

    maps: dict[str, IsotonicRegression] = field(default_factory=dict)

    @classmethod
    def fit(cls, scores: dict[str, np.ndarray], same: np.ndarray) -> Calibration:
        same = np.asarray(same, dtype=float)
        if same.min() == same.max():
            raise ValueError("calibration needs pairs of the same and of different individuals; "
                             "the database has too few identities with two or more images")
        maps = {}
        for name, values in scores.items():
            values = np.asarray(values, float)
            known = np.isfinite(values)
            if not known.any():  # no pair with this evidence: every value reads as none
                known, values = np.ones(len(values), bool), np.zeros(len(values))
            maps[name] = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(
                values[known], same[known])
        return cls(maps)

    def transform(self, scores: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Calibrated scores; NaN (missing) stays NaN."""
        calibrated = {}
        for name, values in scores.items():
            values = np.asarray(values, float)
            found = np.full(len(values), np.nan, np.float32)
            known = np.isfinite(values)
            if known.any():
                found[known] = self.maps[name].predict(values[known])
            calibrated[name] = found
        return calibrated

    def fuse(self, scores: dict[str, np.ndarray], names: Sequence[str] | None = None
             ) -> np.ndarray:
        """Mean of the calibrated scores (of ``names`` only, when given): the probability-like
        fused pair score (:func:`fused_mean`)."""
        names = tuple(self.maps if names is None else names)
        wanted = (*names, *(("cosine",) if "cosine" in scores and "cosine" not in names else ()))
        return fused_mean(self.transform({name: scores[name] for name in wanted}), names)


def fused_mean(calibrated: dict[str, np.ndarray], names: Sequence[str],
               rows: np.ndarray | slice = slice(None)) -> np.ndarray:
    """Each pair's mean of its calibrated ``names`` at ``rows``, missing ones (NaN) left out; a
    pair missing them all (only local scores fused, a photo without keypoints) takes its
    calibrated cosine where ``calibrated`` has it, else 0."""
    stacked = np.stack([np.asarray(calibrated[name], np.float32)[rows] for name in names])
    present = np.isfinite(stacked)
    count = present.sum(axis=0)
    total = np.where(present, stacked, 0.0).sum(axis=0, dtype=np.float32)
    fallback = (np.nan_to_num(np.asarray(calibrated["cosine"], np.float32)[rows])
                if "cosine" in calibrated else np.zeros(stacked.shape[1], np.float32))
    return np.where(count > 0, total / np.maximum(count, 1), fallback).astype(np.float32)


@dataclass
class SpeciesCalibration:
    """One :class:`Calibration` per species, keyed like the thresholds, and the ``pooled`` one
    over every pair. A matcher's raw pair scores live on each species' own scale (a few matches
    between small, dim face crops; hundreds between flanks of striped antelope), so one map pooled
    over species would read one species' true pairs as another's false ones. A species has maps
    of its own only where its pairs can be cross-fitted too (:func:`cross_fitted_calibration`'s
    rule: every fold of its pseudo-query identities leaves pairs of both kinds), so the
    thresholds, fitted on out-of-fold scores, and the answers read the same calibration; the
    others (too few identities) are read by the pooled one. Photos without a species are a
    species like any other (key ``None``)."""

    pooled: Calibration
    species: dict[str | None, Calibration] = field(default_factory=dict)

    @classmethod
    def fit(cls, scores: dict[str, np.ndarray], same: np.ndarray, species: np.ndarray,
            groups: np.ndarray, folds: int = 2, seed: int = 0) -> SpeciesCalibration:
        """``species`` and ``groups`` (the pseudo-query's identity): one key per pair."""
        same, groups = np.asarray(same, bool), np.asarray(groups)
        own = {name: Calibration.fit(_rows_of(scores, rows), same[rows])
               for name, rows in _species_rows(species).items()
               if _foldable(same[rows], groups[rows], folds, seed)}
        return cls(Calibration.fit(scores, same), own)

    def of(self, species: str | None) -> Calibration:
        """The calibration of ``species`` (the pooled one for a species without its own)."""
        return self.species.get(species, self.pooled)

    @property
    def maps(self) -> dict[str, IsotonicRegression]:
        """The pooled maps (by score name)."""
        return self.pooled.maps

    def transform(self, scores: dict[str, np.ndarray], species: np.ndarray
                  ) -> dict[str, np.ndarray]:
        """Each pair's scores by its own species' maps (``species``: one key per pair)."""
        calibrated = {name: np.empty(len(species), np.float32) for name in scores}
        for name, rows in _species_rows(species).items():
            found = self.of(name).transform(_rows_of(scores, rows))
            for score in scores:
                calibrated[score][rows] = found[score]
        return calibrated

    def fuse(self, scores: dict[str, np.ndarray], names: Sequence[str], species: np.ndarray
             ) -> np.ndarray:
        """Mean of the calibrated ``names`` of each pair, by its own species' maps
        (:func:`fused_mean`)."""
        wanted = (*names, *(("cosine",) if "cosine" in scores and "cosine" not in names else ()))
        return fused_mean(self.transform({name: scores[name] for name in wanted}, species), names)


@dataclass
class SpeciesFusion:
    """The fused score of each pair: the scores ``names`` gives its query's species (key
    ``None``: the rest), each calibrated on that species' own scale (``calibration``), combined
    by the species' rule (``rules``, :data:`FUSION_RULES`; default ``mean``, WildFusion's):
    a ``logistic`` species has its stacker in ``stackers`` (a species whose pairs are all of one
    kind keeps the mean). A pair's raw local ``evidence`` (the sum of its fused local scores) is
    what orders pairs that calibration put on one plateau."""

    calibration: SpeciesCalibration
    names: dict[str | None, tuple[str, ...]]
    rules: dict[str | None, str] = field(default_factory=dict)
    stackers: dict[str | None, LogisticRegression] = field(default_factory=dict)
    #: Per species, the share of its labelled pairs that show one individual: what a missing
    #: score (a photo without keypoints) reads as in a stacker, since it tells nothing.
    priors: dict[str | None, float] = field(default_factory=dict)

    @classmethod
    def fit(cls, scores: dict[str, np.ndarray], same: np.ndarray, species: np.ndarray,
            groups: np.ndarray, names: dict[str | None, tuple[str, ...]],
            rules: dict[str | None, str] | None = None, seed: int = 0) -> SpeciesFusion:
        """Calibrated on labelled pairs (``same``; ``species`` and ``groups``, the pseudo-query's
        identity: one key per pair, as :meth:`SpeciesCalibration.fit` takes them); each
        ``logistic`` species' stacker on its pairs' cross-fitted calibrated scores."""
        fusion = cls(SpeciesCalibration.fit(scores, same, species, groups, seed=seed),
                     dict(names), dict(rules or {None: "mean"}))
        species = np.asarray(species, dtype=object)
        same = np.asarray(same, bool)
        stacked = [key for key in dict.fromkeys(species.tolist())
                   if fusion.rule_of(key) == "logistic"]
        if stacked:
            calibrated = cross_fitted_calibration(scores, same, groups, seed=seed,
                                                  species=species)
            for key in stacked:
                rows = np.flatnonzero(species == key)
                fusion.priors[key] = float(same[rows].mean())
                if same[rows].all() or not same[rows].any():
                    continue  # nothing to learn from one kind of pair: the mean
                features = fusion._log_odds(calibrated, rows, key)
                fusion.stackers[key] = LogisticRegression(C=_STACKER_C).fit(features, same[rows])
        return fusion

    def names_of(self, species: str | None) -> tuple[str, ...]:
        return self.names.get(species, self.names[None])

    def rule_of(self, species: str | None) -> str:
        return self.rules.get(species, self.rules.get(None, "mean"))

    def _log_odds(self, calibrated: dict[str, np.ndarray], rows: np.ndarray,
                  species: str | None) -> np.ndarray:
        """The stacker's inputs: each fused name's calibrated log-odds (missing: the prior's),
        probabilities clipped to :data:`_CLIP` from 0 and 1 (an isotonic map's end plateaus
        reach both)."""
        prior = self.priors.get(species, 0.5)
        columns = [np.asarray(calibrated[name], np.float64)[rows]
                   for name in self.names_of(species)]
        found = np.clip(np.nan_to_num(np.stack(columns, 1), nan=prior), _CLIP, 1 - _CLIP)
        return np.log(found / (1 - found))

    def _combined(self, calibrated: dict[str, np.ndarray], rows: np.ndarray,
                  species: str | None) -> np.ndarray:
        """The fused scores at ``rows`` (pairs of one query species) from calibrated ones."""
        stacker = self.stackers.get(species)
        if stacker is None:
            return fused_mean(calibrated, self.names_of(species), rows)
        return stacker.predict_proba(self._log_odds(calibrated, rows, species))[:, 1].astype(
            np.float32)

    def _by_species(self, species: np.ndarray, value) -> np.ndarray:
        """``value(rows, key)`` for the pairs (``rows``) of each query species ``key``."""
        found = np.zeros(len(species), np.float32)
        for key, rows in _species_rows(species).items():
            found[rows] = value(rows, key)
        return found

    def fuse(self, scores: dict[str, np.ndarray], species: np.ndarray) -> np.ndarray:
        """Each pair's fused score from its raw ``scores`` (``species``: its query's)."""
        species = np.asarray(species, dtype=object)

        def fused(rows: np.ndarray, key: str | None) -> np.ndarray:
            names = self.names_of(key)
            wanted = (*names, *(("cosine",) if "cosine" in scores and "cosine" not in names
                                else ()))
            calibrated = self.calibration.transform(
                {name: np.asarray(scores[name])[rows] for name in wanted}, species[rows])
            return self._combined(calibrated, np.arange(len(rows)), key)

        return self._by_species(species, fused)

    def from_calibrated(self, calibrated: dict[str, np.ndarray], species: np.ndarray
                        ) -> np.ndarray:
        """Each pair's fused score from scores calibrated already (out of fold, for thresholds)."""
        return self._by_species(species, lambda rows, key: self._combined(calibrated, rows, key))

    def out_of_fold(self, scores: dict[str, np.ndarray], same: np.ndarray, groups: np.ndarray,
                    species: np.ndarray, seed: int = 0) -> np.ndarray:
        """Each labelled pair's fused score from calibrations fitted without its group
        (:func:`cross_fitted_calibration`): what thresholds are fitted on. (A stacker's three or
        so weights are fitted on these very pairs: a small in-sample optimism.)"""
        return self.from_calibrated(cross_fitted_calibration(scores, same, groups, seed=seed,
                                                             species=species), species)

    def evidence(self, scores: dict[str, np.ndarray], species: np.ndarray) -> np.ndarray:
        """Each pair's raw local evidence: its fused local scores summed, missing ones (a photo
        without keypoints) adding nothing; zero where only the cosine is fused. (With two
        matchers the one on the larger scale weighs more: it orders only pairs whose fused
        scores tie.)"""
        def summed(rows: np.ndarray, key: str | None) -> np.ndarray:
            local = [np.asarray(scores[name], np.float32)[rows] for name in self.names_of(key)
                     if name != "cosine"]
            return (np.nansum(local, axis=0, dtype=np.float32) if local
                    else np.zeros(len(rows), np.float32))

        return self._by_species(species, summed)


def _rows_of(scores: dict[str, np.ndarray], rows: np.ndarray) -> dict[str, np.ndarray]:
    return {name: np.asarray(values)[rows] for name, values in scores.items()}


def _species_rows(species: np.ndarray) -> dict[str | None, np.ndarray]:
    """Rows of each species key, in order of first appearance."""
    species = np.asarray(species, dtype=object)
    return {name: np.flatnonzero(species == name) for name in dict.fromkeys(species.tolist())}


def cross_fitted_calibration(scores: dict[str, np.ndarray], same: np.ndarray, groups: np.ndarray,
                             folds: int = 2, seed: int = 0, species: np.ndarray | None = None
                             ) -> dict[str, np.ndarray]:
    """Calibrated scores of labelled pairs, each from a calibration fitted without its group (e.g.
    the pseudo-query's identity): what thresholds and the choice of fused scores must be fitted
    on, since in-sample isotonic steps follow the very labels they are scored against. Falls back
    to the in-sample fit when a fold lacks pairs of the same or of different individuals (tiny
    databases). ``species`` (one key per pair): each species cross-fitted on its own pairs where
    its folds allow (:class:`SpeciesCalibration`'s rule), else given the pooled values."""
    same, groups = np.asarray(same, bool), np.asarray(groups)
    calibrated = _cross_fitted(scores, same, groups, folds, seed)
    for rows in (_species_rows(species).values() if species is not None else ()):
        if _foldable(same[rows], groups[rows], folds, seed):
            own = _cross_fitted(_rows_of(scores, rows), same[rows], groups[rows], folds, seed)
            for name in scores:
                calibrated[name][rows] = own[name]
    return calibrated


def _folds(groups: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Each pair's fold: its group's, groups dealt to folds in a seeded random order."""
    names = np.unique(groups)
    fold_of = dict(zip(np.random.default_rng(seed).permutation(names),
                       np.arange(len(names)) % folds))
    return np.array([fold_of[g] for g in groups], np.int64)


def _foldable(same: np.ndarray, groups: np.ndarray, folds: int, seed: int) -> bool:
    """Whether every fold's complement holds pairs of the same and of different individuals."""
    if len(same) == 0:
        return False
    fold = _folds(groups, folds, seed)
    return all(same[fold != number].any() and not same[fold != number].all()
               for number in range(folds))


def _cross_fitted(scores: dict[str, np.ndarray], same: np.ndarray, groups: np.ndarray,
                  folds: int, seed: int) -> dict[str, np.ndarray]:
    if not _foldable(same, groups, folds, seed):
        return Calibration.fit(scores, same).transform(scores)
    fold = _folds(groups, folds, seed)
    calibrated = {name: np.empty(len(same), np.float32) for name in scores}
    for number in range(folds):
        held = fold == number
        found = Calibration.fit(_rows_of(scores, ~held), same[~held]).transform(
            _rows_of(scores, held))
        for name in scores:
            calibrated[name][held] = found[name]
    return calibrated
