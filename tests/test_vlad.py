"""VLAD against a brute-force reference written from the paper's definition, on a small set that
reaches the hard cases: a photo without descriptors, a centre no descriptor is assigned to."""

from __future__ import annotations

import numpy as np
import pytest

from wildreid.vlad import Vlad


def _reference(descriptors, centres):
    """VLAD by loops: nearest centre by squared distance, residual sums, intra-normalisation,
    signed square root, global L2 norm."""
    rows = []
    for found in descriptors:
        sums = np.zeros_like(centres, dtype=np.float64)
        for vector in found:
            nearest = int(np.argmin(((centres - vector) ** 2).sum(axis=1)))
            sums[nearest] += vector - centres[nearest]
        for k in range(len(centres)):
            norm = np.sqrt((sums[k] ** 2).sum())
            if norm > 0:
                sums[k] /= norm
        flat = np.sign(sums.ravel()) * np.sqrt(np.abs(sums.ravel()))
        length = np.sqrt((flat ** 2).sum())
        rows.append(flat / length if length > 0 else flat)
    return np.array(rows)


def test_vlad_equals_the_definition_on_hard_cases():
    rng = np.random.default_rng(0)
    database = [rng.standard_normal((n, 8)).astype(np.float32) for n in (40, 25, 60, 33)]
    vlad = Vlad(clusters=6, seed=0).fit(database)
    # A far-away centre no query descriptor is near, so one block of each VLAD stays empty.
    vlad.centres_[0] = 100.0
    queries = [rng.standard_normal((n, 8)).astype(np.float32) for n in (1, 7, 30)]
    queries.insert(1, np.zeros((0, 8), np.float32))  # a photo with no keypoint
    found = vlad.transform(queries)
    expected = _reference(queries, vlad.centres_.astype(np.float64))
    assert found.shape == (4, 6 * 8)
    np.testing.assert_allclose(found, expected, atol=1e-5)
    assert not found[1].any()  # no descriptors: the zero vector
    assert not found[:, :8].any()  # the far centre's block
    np.testing.assert_allclose(np.linalg.norm(found[[0, 2, 3]], axis=1), 1, atol=1e-5)


def test_vlad_refuses_too_few_descriptors_for_its_codebook():
    with pytest.raises(ValueError, match="cannot fit 64 centres"):
        Vlad(clusters=64).fit([np.ones((10, 8), np.float32)])
