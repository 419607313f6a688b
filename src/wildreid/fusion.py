"""Calibration and fusion (WildFusion, Čermák et al. 2024): each matcher's pair score becomes the
probability that the pair shows one individual (isotonic regression fitted on database pairs),
and the fused score is the mean of these probabilities."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from sklearn.isotonic import IsotonicRegression


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
            maps[name] = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(
                np.asarray(values, float), same)
        return cls(maps)

    def transform(self, scores: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {name: self.maps[name].predict(np.asarray(values, float)).astype(np.float32)
                for name, values in scores.items()}

    def fuse(self, scores: dict[str, np.ndarray], names: Sequence[str] | None = None
             ) -> np.ndarray:
        """Mean of the calibrated scores (of ``names`` only, when given): the probability-like
        fused pair score."""
        chosen = {name: scores[name] for name in (self.maps if names is None else names)}
        calibrated = self.transform(chosen)
        return np.mean(np.stack(list(calibrated.values())), axis=0)


def cross_fitted_calibration(scores: dict[str, np.ndarray], same: np.ndarray, groups: np.ndarray,
                              folds: int = 2, seed: int = 0) -> dict[str, np.ndarray]:
    """Calibrated scores of labelled pairs, each from a calibration fitted without its group (e.g.
    the pseudo-query's identity): what thresholds and the choice of fused scores must be fitted
    on, since in-sample isotonic steps follow the very labels they are scored against. Falls back
    to the in-sample fit when a fold lacks pairs of the same or of different individuals (tiny
    databases)."""
    same = np.asarray(same, bool)
    names = np.unique(groups)
    fold_of = dict(zip(np.random.default_rng(seed).permutation(names),
                       np.arange(len(names)) % folds))
    fold = np.array([fold_of[g] for g in groups])
    calibrated = {name: np.empty(len(same), np.float32) for name in scores}
    for number in range(folds):
        held = fold == number
        rest = {name: np.asarray(values)[~held] for name, values in scores.items()}
        try:
            calibration = Calibration.fit(rest, same[~held])
        except ValueError:
            return Calibration.fit(scores, same).transform(scores)
        found = calibration.transform({name: np.asarray(v)[held] for name, v in scores.items()})
        for name in scores:
            calibrated[name][held] = found[name]
    return calibrated
