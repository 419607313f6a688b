"""One vector per photo from its local descriptors: VLAD (Jégou et al., CVPR 2010), instance
retrieval's classic answer to "find the same pattern" — a candidate first stage, beside the global
descriptor's cosine, whose job is to put a photo of the right individual in each query's
shortlist.

A codebook of ``clusters`` centres is fitted on the database's descriptors (faiss k-means); a
photo's VLAD sums, per centre, the residuals of the descriptors assigned to it, each centre's sum
L2-normalised on its own (intra-normalisation, Arandjelović & Zisserman 2013: one repeated
texture cannot drown the rest), then signed square roots (power normalisation) and a global L2
norm, so the dot product of two VLADs is a cosine. A photo without descriptors is the zero vector:
it matches nothing, and its global cosine judges it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from sklearn.base import BaseEstimator

#: Descriptors sampled from the database to fit the codebook (k-means cost is linear in them).
CODEBOOK_SAMPLE = 100_000


class Vlad(BaseEstimator):
    """VLAD of sets of local descriptors (module docstring). ``fit`` on the database's sets;
    ``transform`` gives one L2-normalised float32 row per set (``clusters x dim`` wide).
    After ``fit``: ``centres_`` ``(clusters, dim)``."""

    def __init__(self, clusters: int = 64, iterations: int = 20, seed: int = 0):
        self.clusters = clusters
        self.iterations = iterations
        self.seed = seed

    def fit(self, descriptors: Sequence[np.ndarray]) -> Vlad:
        import faiss

        kept = [np.asarray(d, np.float32).reshape(len(d), -1) for d in descriptors if len(d)]
        stacked = np.concatenate(kept, axis=0) if kept else np.zeros((0, 1), np.float32)
        if len(stacked) < self.clusters:
            raise ValueError(f"{len(stacked)} local descriptors cannot fit {self.clusters} "
                             "centres: give more photos or fewer clusters")
        rng = np.random.default_rng(self.seed)
        if len(stacked) > CODEBOOK_SAMPLE:
            stacked = stacked[rng.choice(len(stacked), CODEBOOK_SAMPLE, replace=False)]
        kmeans = faiss.Kmeans(stacked.shape[1], self.clusters, niter=self.iterations,
                              seed=self.seed, verbose=False)
        kmeans.train(np.ascontiguousarray(stacked))
        self.centres_ = kmeans.centroids.astype(np.float32)
        return self

    def transform(self, descriptors: Sequence[np.ndarray]) -> np.ndarray:
        import faiss

        clusters, dim = self.centres_.shape
        index = faiss.IndexFlatL2(dim)
        index.add(self.centres_)
        vectors = np.zeros((len(descriptors), clusters * dim), np.float32)
        for row, found in enumerate(descriptors):
            if len(found) == 0:
                continue  # nothing detected: the zero vector
            found = np.asarray(found, np.float32).reshape(len(found), dim)
            _, nearest = index.search(np.ascontiguousarray(found), 1)
            nearest = nearest[:, 0]
            sums = np.zeros((clusters, dim), np.float32)
            np.add.at(sums, nearest, found - self.centres_[nearest])
            norms = np.linalg.norm(sums, axis=1, keepdims=True)
            sums = np.divide(sums, norms, out=np.zeros_like(sums), where=norms > 0)
            flat = np.sign(sums.ravel()) * np.sqrt(np.abs(sums.ravel()))
            length = np.linalg.norm(flat)
            if length > 0:
                vectors[row] = flat / length
        return vectors
