"""One cached, resumable extraction stage over image files — what the global descriptor
(:class:`~wildreid.features.FeatureExtractor`), the segmenter
(:class:`~wildreid.isolation.Isolator`) and the local features
(:class:`~wildreid.local.KeypointExtractor`) share.

Each image has a key (its content, plus the region or variant it is seen through); a row per key
is read from the cache once, the missing ones are computed in batches — in this process, or in
chunks over a Ray pool (:mod:`wildreid.distributed`) — and each batch is written to the cache as
soon as it is done, so a killed run loses nothing it finished. Identical files are computed once.
A subclass says how to compute the rows of some images (:meth:`CachedStage.compute`) and how a
row becomes the object callers get (:meth:`CachedStage.decode`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from wildreid.cache import ArrayCache
from wildreid.images import ImageError
from wildreid.progress import progress_bar

#: Images per chunk sent to one worker of a Ray pool: big enough to keep a GPU busy between
#: round trips, small enough that a lost worker costs little.
CHUNK_IMAGES = 256


class CachedStage:
    """Rows for image files by key: from memory, the cache, or computed (see module doc).

    ``what``: the name of the rows in messages (``features``, ``regions``, ``keypoints``).
    ``pool``: a :class:`~wildreid.distributed.RayPool` to compute on, else this process.
    """

    what = "rows"

    def __init__(self, cache: ArrayCache | None, progress: bool = True, pool=None):
        self.cache = cache
        self.progress = progress
        self.pool = pool
        self.last_computed: list[str] = []
        self._memory: dict[str, Any] = {}

    # -- what a stage defines ------------------------------------------------------------------
    def compute(self, paths: Sequence[str], items: Sequence) -> Iterator[
            tuple[list[int], np.ndarray, list[str]]]:
        """Batches ``(indices into paths, rows, error messages)`` for ``paths`` (``items``: what
        else each image needs, e.g. its region)."""
        raise NotImplementedError

    def decode(self, row: np.ndarray) -> Any:
        """The object a row stands for (the row itself by default)."""
        return row

    def worker(self) -> Callable[[], CachedStage]:
        """The recipe (a picklable callable) of this stage for a pool worker: the same settings,
        no cache, no progress bar, no pool — the driver writes the cache."""
        raise NotImplementedError

    def key(self) -> str:
        """What this stage computes, as its cache namespace says it (workers are reused by it)."""
        raise NotImplementedError

    def compute_all(self, paths: Sequence[str], items: Sequence
                    ) -> tuple[list[int], np.ndarray | None, list[str]]:
        """:meth:`compute` of one chunk, gathered (what a pool worker sends back)."""
        indices, rows, errors = [], [], []
        for batch_indices, batch_rows, batch_errors in self.compute(paths, items):
            indices.extend(batch_indices)
            rows.append(batch_rows)
            errors.extend(batch_errors)
        return indices, np.concatenate(rows) if rows else None, errors

    # -- shared ----------------------------------------------------------------------------------
    def rows(self, paths: Sequence[str], keys: Sequence[str], items: Sequence,
             description: str) -> list[Any]:
        """The decoded row of every key, computing (and caching) the missing ones."""
        wanted = [k for k in dict.fromkeys(keys) if k not in self._memory]
        if self.cache is not None and wanted:  # each cached row read (and checked) once
            self._memory.update((k, self.decode(row))
                                for k, row in self.cache.fetch(wanted).items())
        todo = sorted({k: i for i, k in reversed(list(enumerate(keys)))
                       if k not in self._memory}.values())
        self.last_computed = [keys[i] for i in todo]  # what this call had to compute
        if todo:
            failed = self._fill([paths[i] for i in todo], [keys[i] for i in todo],
                                [items[i] for i in todo], description)
            if failed:
                raise ImageError(f"{len(failed)} image(s) could not be decoded ({self.what} of "
                                 "the others are cached):\n  - " + "\n  - ".join(failed))
        return [self._memory[k] for k in keys]

    def _fill(self, paths: list[str], keys: list[str], items: list, description: str
              ) -> list[str]:
        failed: list[str] = []
        with progress_bar("images", self.progress) as bar:
            task = bar.add_task(description, total=len(paths))
            if self.pool is None:
                batches = self.compute(paths, items)
            else:
                batches = self.pool.map_chunks(self, paths, items, CHUNK_IMAGES)
            for indices, rows, errors in batches:
                failed.extend(errors)
                if len(indices):
                    done = [keys[i] for i in indices]
                    if self.cache is not None:
                        self.cache.put(done, rows)
                    # Through the row even when not cached: answers never depend on whether it
                    # was computed now or read back.
                    self._memory.update(zip(done, map(self.decode, rows)))
                bar.advance(task, len(indices) + len(errors))
        return failed

    def forget(self, keys: Sequence[str]) -> None:
        """Drop rows from memory (to compute or read them again)."""
        for key in keys:
            self._memory.pop(key, None)
