"""Nearest database images for very large galleries: an inverted-file index (faiss ``IVFFlat``,
inner product on L2-normalised embeddings, i.e. cosine).

Below :data:`APPROXIMATE_ABOVE` images per species the shortlist and the identity ranking stay
exact (numpy, chunked): on a 2-core CPU an exact pass over 100,000 images takes 2 ms per query,
and nothing is approximated. Above it, an :class:`ImageIndex` is built per species: the
database is clustered into ``lists`` cells (k-means on a sample), and a query is compared only
with the images of its ``probes`` nearest cells. ``benchmarks/ann_shortlist.py`` measures the
break-even size, recall@100 against exact search and the latency per query.

An index costs minutes to build at a million images, so :func:`load_or_build` keeps it beside
the feature cache (``<cache>/indexes``) under the content key of the rows it holds: a catalogue is
indexed once, and a catalogue that has grown (rows appended, as ``partial_fit`` and a catalog's
new photos append them) reuses the cells of its last index and only adds the new rows.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from pathlib import Path

import numpy as np

#: Galleries (images of one species) larger than this use the approximate index. Measured
#: (docs/decisions/0007-approximate-shortlist.md): a run of about 2,000 queries (AnimalCLEF
#: size) pays the index's build back from between 200,000 images (2,941 queries needed) and
#: 400,000 (1,064); below, exact search is quicker overall and approximates nothing.
APPROXIMATE_ABOVE = 300_000
#: Cells probed per query: recall@100 1.0 from 10,000 to 1,000,000 images on the benchmark
#: (16 probes: 0.92 at 10,000); 48 keeps a margin for data less clustered than its model.
DEFAULT_PROBES = 48
#: An index grown by appending keeps the cells it was trained with while the rows trained on
#: are at least this share of all rows; below, cells fitted on too little are trained again.
EXTEND_WHILE_TRAINED_SHARE = 0.5


class ImageIndex:
    """Approximate inner-product search over ``features`` (rows L2-normalised), faiss IVF.

    ``lists`` defaults to about 4 sqrt(N) cells; k-means (10 iterations) is trained on at most
    40 images per cell, faiss' own minimum."""

    def __init__(self, features: np.ndarray, lists: int | None = None,
                 probes: int = DEFAULT_PROBES, seed: int = 0):
        import faiss

        features = np.ascontiguousarray(features, dtype=np.float32)
        count, dim = features.shape
        self.trained_rows = count
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

    @property
    def rows(self) -> int:
        return int(self._index.ntotal)

    def add(self, features: np.ndarray) -> None:
        """Append rows (their indices follow the existing ones), into the trained cells."""
        self._index.add(np.ascontiguousarray(features, dtype=np.float32))

    def save(self, path: Path) -> None:
        """Write the index to ``path`` whole or not at all (a temporary file, then renamed)."""
        import faiss

        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        faiss.write_index(self._index, str(temporary))
        os.replace(temporary, path)

    @classmethod
    def load(cls, path: Path, trained_rows: int, probes: int = DEFAULT_PROBES) -> ImageIndex:
        import faiss

        index = cls.__new__(cls)
        index._index = faiss.read_index(str(path))
        index._quantizer = None  # owned by the index read from file
        index.lists, index.probes, index.trained_rows = int(index._index.nlist), probes, trained_rows
        return index

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Row indices (-1 pads) and inner products of each query's ``k`` nearest images."""
        self._index.nprobe = min(self.probes, self.lists)
        scores, rows = self._index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
        return rows.astype(np.int64), np.where(rows >= 0, scores, -np.inf).astype(np.float32)


#: Saved index files: ``ivf-<rows>-<rows trained on>-<content key of the rows>.faiss``.
_SAVED = re.compile(r"ivf-(\d+)-(\d+)-([0-9a-f]{32})\.faiss")


def _prefix_keys(features: np.ndarray, lengths: list[int]) -> dict[int, str]:
    """Content keys of the first ``n`` rows for each ``n`` in ``lengths``, hashed in one pass."""
    digest = hashlib.blake2b(f"{features.shape[1]}:{features.dtype}".encode(), digest_size=16)
    keys, done = {}, 0
    for length in sorted(set(lengths)):
        for begin in range(done, length, 65536):
            digest.update(features[begin:min(length, begin + 65536)].tobytes())
        done = length
        keys[length] = digest.copy().hexdigest()
    return keys


def load_or_build(features: np.ndarray, folder: str | Path | None,
                  probes: int = DEFAULT_PROBES) -> tuple[ImageIndex, str]:
    """An index over ``features`` and how it was had (``loaded``, ``extended``, ``built``).

    With a ``folder``: the index saved there for exactly these rows is read; else the largest
    one saved for the first rows of ``features`` is read and the rest added (while its trained
    rows stay :data:`EXTEND_WHILE_TRAINED_SHARE` of all), saved under the new rows' key and the
    smaller one removed; else one is built and saved (indexes of fewer of these rows removed). A
    damaged file is rebuilt. ``folder`` holds one gallery's indexes (a species' own, or the
    pooled one): a gallery whose rows start with another's must not take over its index."""
    features = np.ascontiguousarray(features, dtype=np.float32)
    if folder is None:
        return ImageIndex(features, probes=probes), "built"
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    saved = []
    for path in folder.glob("ivf-*.faiss"):
        match = _SAVED.fullmatch(path.name)
        if match and int(match[1]) <= len(features):
            saved.append((int(match[1]), int(match[2]), match[3], path))
    keys = _prefix_keys(features, [len(features)] + [rows for rows, *_ in saved])
    for rows, trained, key, path in sorted(saved, key=lambda entry: -entry[0]):
        if keys[rows] != key or trained < EXTEND_WHILE_TRAINED_SHARE * len(features):
            continue
        try:
            index = ImageIndex.load(path, trained, probes)
        except RuntimeError:  # faiss' error for a truncated or foreign file
            continue
        if index.rows != rows:
            continue
        if rows == len(features):
            return index, "loaded"
        index.add(features[rows:])
        index.save(folder / f"ivf-{len(features)}-{trained}-{keys[len(features)]}.faiss")
        path.unlink(missing_ok=True)  # the grown index replaces it
        return index, "extended"
    index = ImageIndex(features, probes=probes)
    index.save(folder / f"ivf-{len(features)}-{len(features)}-{keys[len(features)]}.faiss")
    for rows, _, key, path in saved:  # indexes of fewer of these rows: superseded by this one
        if rows < len(features) and keys[rows] == key:
            path.unlink(missing_ok=True)
    return index, "built"
