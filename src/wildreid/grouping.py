"""Group the queries answered ``new_individual`` into proposed new individuals (``--cluster-new``).

Several photos of one unseen animal should get one name (``new_individual_1``...), as AnimalCLEF
2026 scores. The queries are clustered agglomeratively (SciPy's hierarchy, the algorithm behind
scikit-learn's ``AgglomerativeClustering``) on the very similarity that ranks candidates — the
cosine, or the calibrated fusion of local matches with it — and the tree is cut where it merges
pairs scoring at least a threshold. The linkage and the threshold are fitted per species on the
database alone: identities held out whole (pseudo-unknowns, as in :mod:`wildreid.openset`) are
clustered and compared with their true identities; the cut of best adjusted Rand index is
kept (pairwise F1 would favour merging everything when photos of one animal score little
higher than others: one big group has recall 1).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.spatial.distance import squareform
from sklearn.metrics import adjusted_rand_score
from sklearn.metrics.cluster import pair_confusion_matrix

from wildreid.data import NEW_INDIVIDUAL
from wildreid.per_species import species_keys
from wildreid.pseudo_queries import pseudo_split

LINKAGES = ("average", "complete", "single")
_PROPOSED = re.compile(re.escape(NEW_INDIVIDUAL) + r"_[0-9]+")


def is_new(answers) -> np.ndarray:
    """Which answers say "not in the database": ``new_individual`` or a proposed new individual
    ``new_individual_<n>``."""
    return np.array([isinstance(a, str) and (a == NEW_INDIVIDUAL or bool(_PROPOSED.fullmatch(a)))
                     for a in answers], dtype=bool)


def is_proposed(answers) -> np.ndarray:
    """Which answers name a proposed new individual (``new_individual_<n>``)."""
    return np.array([isinstance(a, str) and bool(_PROPOSED.fullmatch(a)) for a in answers], bool)


def cluster(similarity: np.ndarray, method: str, threshold: float) -> np.ndarray:
    """Cluster labels (0, 1, ...) cutting the ``method``-linkage tree of ``1 - similarity`` where
    it would join groups less similar than ``threshold``."""
    n = len(similarity)
    if n < 2:
        return np.zeros(n, np.int64)
    return fcluster(_tree(similarity, method), 1.0 - threshold, criterion="distance") - 1


def _tree(similarity: np.ndarray, method: str) -> np.ndarray:
    similarity = np.asarray(similarity, np.float64)
    distance = np.clip(1.0 - (similarity + similarity.T) / 2, 0.0, None)
    np.fill_diagonal(distance, 0.0)
    return linkage(squareform(distance, checks=False), method=method)


def pair_counts(truth, labels) -> np.ndarray:
    """Pairs of items (true positives, false positives, false negatives, true negatives): put
    together and of one identity, put together wrongly, of one identity and kept apart, of two
    and kept apart."""
    matrix = pair_confusion_matrix(truth, labels) // 2  # counted as ordered pairs
    return np.array([matrix[1, 1], matrix[0, 1], matrix[1, 0], matrix[0, 0]], np.int64)


def _ratio(numerator: float, denominator: float) -> float:
    """``numerator / denominator``, NaN (undefined) when there is nothing to divide by."""
    return float(numerator / denominator) if denominator else math.nan


def _ari(counts: np.ndarray) -> float:
    """The adjusted Rand index from pair counts (as scikit-learn computes it; pooled counts of
    several groupings give their pooled index)."""
    tp, fp, fn, tn = (float(c) for c in counts)
    denominator = (tp + fn) * (fn + tn) + (tp + fp) * (fp + tn)
    return 1.0 if denominator == 0 else 2.0 * (tp * tn - fn * fp) / denominator


def grouping_scores(truth, labels) -> dict[str, float]:
    """Pairwise precision, recall and F1 of a grouping against the true identities, and the
    adjusted Rand index.

    Precision judges the pairs put together, recall the pairs of one identity, F1 both
    (``2 TP / (2 TP + FP + FN)``). A score with no pair to judge is undefined, NaN (shown "n/a"),
    never 0 or 1: with every item alone and no two of one identity, all three are NaN; with
    nothing put together, precision alone is; with no two items of one identity, recall alone.
    The adjusted Rand index compares the two partitions whole and keeps scikit-learn's
    convention: 1 when they are the same, even all singletons."""
    true_positive, false_positive, false_negative, _ = pair_counts(truth, labels)
    return {"pairwise_precision": _ratio(true_positive, true_positive + false_positive),
            "pairwise_recall": _ratio(true_positive, true_positive + false_negative),
            "pairwise_f1": _ratio(2 * true_positive,
                                  2 * true_positive + false_positive + false_negative),
            "ari": float(adjusted_rand_score(truth, labels))}


@dataclass
class NewIndividualGrouping:
    """The fitted cut of each species (key ``None``: species without one): ``(linkage,
    threshold)``, and the adjusted Rand index it reached on the database's pseudo-unknowns."""

    cuts: dict[str | None, tuple[str, float]]
    quality: dict[str | None, float] = field(default_factory=dict)

    def cut_for(self, species) -> tuple[str, float]:
        key = None if species is None or pd.isna(species) else str(species)
        return self.cuts.get(key, self.cuts[None])

    def predict(self, similarity: np.ndarray, species=None) -> np.ndarray:
        """Group labels of images whose pairwise ``similarity`` is given (one species)."""
        method, threshold = self.cut_for(species)
        return cluster(similarity, method, threshold)

    @classmethod
    def fit(cls, similarity_of: Callable[[np.ndarray], np.ndarray], identities, species=None,
            repeats: int = 3, max_images: int = 300, seed: int = 0) -> NewIndividualGrouping:
        """Fit the cut per species: ``repeats`` pseudo-splits of the database; the pseudo-unknown
        images of each (at most ``max_images``) are scored with ``similarity_of(rows)`` (database
        rows -> their similarity matrix) and clustered with each linkage; the linkage and
        threshold of best pooled adjusted Rand index win."""

        identities = np.asarray(identities, dtype=object).astype(str)
        species = species_keys(species, len(identities))
        groups = {s: np.flatnonzero(species == s) for s in dict.fromkeys(species) if s is not None}
        if not groups:
            groups = {None: np.arange(len(identities))}
        rng = np.random.default_rng(seed)
        cuts: dict[str | None, tuple[str, float]] = {}
        quality: dict[str | None, float] = {}
        sizes: dict[str | None, int] = {}
        for key, rows in groups.items():
            rounds = []
            for _ in range(repeats):
                split = pseudo_split(identities[rows], rng)
                if split is None:
                    break
                unknown = rows[split.queries[split.unknown]]
                # Whole identities, in random order, up to max_images photos.
                counts = pd.Series(identities[unknown]).value_counts()
                order = rng.permutation(counts.index.to_numpy())
                chosen = order[np.cumsum(counts[order].to_numpy()) <= max_images]
                unknown = unknown[np.isin(identities[unknown], chosen if len(chosen) else order[:1])]
                unknown = unknown[:max_images]
                if len(unknown) >= 2:
                    rounds.append((identities[unknown], similarity_of(unknown)))
            if not rounds or all(len(set(t)) == len(t) for t, _ in rounds):
                continue  # no held-out identity with two photos: nothing to learn a cut from
            cuts[key], quality[key] = _best_cut(rounds)
            sizes[key] = sum(len(t) for t, _ in rounds)
        if not cuts:
            raise ValueError("too few identities with two or more photos to fit how new "
                             "individuals are grouped; add photos or leave --cluster-new off")
        if None not in cuts:  # species without a cut of their own take the best-supported one
            widest = max(sizes, key=sizes.get)
            cuts[None], quality[None] = cuts[widest], quality[widest]
        return cls(cuts, quality)


def _best_cut(rounds: list[tuple[np.ndarray, np.ndarray]]) -> tuple[tuple[str, float], float]:
    """The (linkage, threshold) of best adjusted Rand index pooled over ``rounds`` of (truth,
    similarity); ties go to the higher threshold (fewer, surer merges)."""
    best, best_key = ("average", 1.0), (-1.0, -np.inf)
    for method in LINKAGES:
        trees = [_tree(similarity, method) for _, similarity in rounds]
        heights = np.unique(np.concatenate([tree[:, 2] for tree in trees]))
        # A cut changes only at merge heights: test below the lowest, between each two, above.
        cuts = np.concatenate([[heights[0] - 1e-6], (heights[1:] + heights[:-1]) / 2,
                               [heights[-1] + 1e-6]])
        if len(cuts) > 400:
            cuts = np.unique(np.quantile(cuts, np.linspace(0, 1, 400)))
        for cut in cuts:
            counts = sum(pair_counts(truth, fcluster(tree, cut, criterion="distance"))
                         for (truth, _), tree in zip(rounds, trees))
            key = (round(_ari(counts), 12), 1.0 - cut)
            if key > best_key:
                best, best_key = (method, float(1.0 - cut)), key
    return best, best_key[0]


def name_groups(labels_by_query: pd.Series) -> pd.Series:
    """``new_individual_<n>`` names for group labels (any hashable, e.g. ``(species, label)``),
    numbered from 1 in order of first appearance."""
    numbers = {label: n for n, label in enumerate(dict.fromkeys(labels_by_query), start=1)}
    return labels_by_query.map(lambda label: f"{NEW_INDIVIDUAL}_{numbers[label]}")
