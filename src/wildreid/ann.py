"""Nearest database images for very large galleries: an inverted-file index (faiss ``IVFFlat``,
inner product on L2-normalised embeddings, i.e. cosine).

Below :data:`APPROXIMATE_ABOVE` images per species the shortlist and the identity ranking stay
exact (numpy, chunked): on a 2-core CPU an exact pass over 100,000 images takes 2 ms per query,
and nothing is approximated. Above it, an :class:`ImageIndex` is built per species: the
database is clustered into ``lists`` cells (k-means on a sample), and a query is compared only
with the images of its ``probes`` nearest cells. ``benchmarks/ann_shortlist.py`` measures the
break-even size, recall@100 against exact search and the latency per query.
"""

from __future__ import annotations

import math

import numpy as np

#: Galleries (images of one species) larger than this use the approximate index. Measured
#: (BENCHMARKS.md, "The shortlist at a million images"): a run of about 2,000 queries (AnimalCLEF
#: size) pays the index's build back from between 200,000 images (2,941 queries needed) and
#: 400,000 (1,064); below, exact search is quicker overall and approximates nothing.
APPROXIMATE_ABOVE = 300_000
#: Cells probed per query: recall@100 1.0 from 10,000 to 1,000,000 images on the benchmark
#: (16 probes: 0.92 at 10,000); 48 keeps a margin for data less clustered than its model.
DEFAULT_PROBES = 48


class ImageIndex:
    """Approximate inner-product search over ``features`` (rows L2-normalised), faiss IVF.

    ``lists`` defaults to about 4 sqrt(N) cells; k-means (10 iterations) is trained on at most
    40 images per cell, faiss' own minimum."""

    def __init__(self, features: np.ndarray, lists: int | None = None,
                 probes: int = DEFAULT_PROBES, seed: int = 0):
        import faiss

        features = np.ascontiguousarray(features, dtype=np.float32)
        count, dim = features.shape
        self.lists = lists or max(1, min(count // 39, int(4 * math.sqrt(count))))
        quantizer = faiss.IndexFlatIP(dim)
        self._index = faiss.IndexIVFFlat(quantizer, dim, self.lists, faiss.METRIC_INNER_PRODUCT)
        self._index.cp.niter = 10  # cells need not be optimal, only compact: builds 2.5x faster
        self._index.cp.seed = seed
        sample = features
        if count > 40 * self.lists:  # k-means on a sample: as good, much quicker
            rows = np.random.default_rng(seed).choice(count, 40 * self.lists, replace=False)
            sample = features[np.sort(rows)]
        self._index.train(sample)
        self._index.add(features)
        self.probes = probes
        self._quantizer = quantizer  # faiss holds a pointer: keep the object alive

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Row indices (-1 pads) and inner products of each query's ``k`` nearest images."""
        self._index.nprobe = min(self.probes, self.lists)
        scores, rows = self._index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        return rows.astype(np.int64), np.where(rows >= 0, scores, -np.inf).astype(np.float32)
