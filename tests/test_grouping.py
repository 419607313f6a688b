"""``--cluster-new``: queries answered new_individual grouped into proposed new individuals, on
real photos, with the cut fitted on the database; its scores, and the review app's one-step
acceptance of a proposed group."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from wildreid.grouping import _ari, cluster, grouping_scores, is_new, is_proposed, pair_counts


def test_pair_counts_and_the_adjusted_rand_index_agree_with_scikit_learn():
    rng = np.random.default_rng(0)
    for _ in range(20):
        truth, labels = rng.integers(0, 6, 50), rng.integers(0, 4, 50)
        assert _ari(pair_counts(truth, labels)) == pytest.approx(adjusted_rand_score(truth, labels))
    counts = pair_counts(["a", "a", "a", "b"], [0, 0, 1, 1])  # pairs: aa aa aa ab ab ab
    assert counts.tolist() == [1, 1, 2, 2]  # together right, together wrong, apart wrong, apart
    scores = grouping_scores(["a", "a", "a", "b"], [0, 0, 1, 1])
    assert scores["pairwise_precision"] == 0.5 and scores["pairwise_recall"] == pytest.approx(1 / 3)


def test_a_tree_is_cut_at_the_threshold():
    similarity = np.array([[1, .9, .2], [.9, 1, .3], [.2, .3, 1]])
    assert len(set(cluster(similarity, "average", 0.8))) == 2
    assert len(set(cluster(similarity, "average", 0.95))) == 3
    assert len(set(cluster(similarity, "single", 0.25))) == 1
    assert cluster(np.ones((1, 1)), "average", 0.5).tolist() == [0]


def test_proposed_names_are_told_from_database_names():
    answers = ["new_individual", "new_individual_12", "new_individual_", "lion_7", None,
               "new_individual_3b"]
    assert is_new(answers).tolist() == [True, True, False, False, False, False]
    assert is_proposed(answers).tolist() == [False, True, False, False, False, False]
