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

Rows too many to hold (keypoints of 10^5 images) are not all kept: with a cache, a stage made
with ``memory_rows`` keeps at most that many decoded rows (the most recently used), and
:meth:`CachedStage.lazy` gives a :class:`LazyRows` view that reads rows by key when asked.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
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
    ``memory_rows``: decoded rows kept in memory, the most recently used (``None``: all; without
    a cache, or once its folder refuses writes, all are kept whatever it says, since nothing
    could be read back).
    """

    what = "rows"

    def __init__(self, cache: ArrayCache | None, progress: bool = True, pool=None,
                 memory_rows: int | None = None):
        self.cache = cache
        self.progress = progress
        self.pool = pool
        self.memory_rows = memory_rows if cache is not None else None
        self.last_computed: list[str] = []
        self._memory: OrderedDict[str, Any] = OrderedDict()
        # One stage may serve several threads (the review app's requests, a block read ahead
        # while another is matched); rows evicted by one must not vanish under another.
        self._lock = threading.RLock()

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
        with self._lock:
            return self._rows(paths, keys, items, description)

    def _rows(self, paths: Sequence[str], keys: Sequence[str], items: Sequence,
              description: str) -> list[Any]:
        found = {k: self._memory[k] for k in dict.fromkeys(keys) if k in self._memory}
        wanted = [k for k in dict.fromkeys(keys) if k not in found]
        if self.cache is not None and wanted:  # each cached row read (and checked) once
            found.update((k, self.decode(row)) for k, row in self.cache.fetch(wanted).items())
        self._compute(paths, keys, items, _first_missing(keys, found), description, found)
        self._remember(found)
        return [found[k] for k in keys]

    def ensure(self, paths: Sequence[str], keys: Sequence[str], items: Sequence,
               description: str) -> None:
        """Every key's row computed and in the cache (without one: in memory); rows computed
        now are not decoded here (they are when read)."""
        with self._lock:
            if not self._caching:  # rows computed now could not be read back: kept decoded
                self._rows(paths, keys, items, description)
                return
            held = set(self._memory) | self.cache.present(list(keys))
            self._compute(paths, keys, items, _first_missing(keys, held), description, None)

    def lazy(self, paths: Sequence[str], keys: Sequence[str], items: Sequence,
             description: str) -> LazyRows:
        """Every key's row computed and cached (:meth:`ensure`), as a view reading them when
        asked."""
        self.ensure(paths, keys, items, description)
        return LazyRows(self, list(paths), list(keys), list(items), description)

    @property
    def _caching(self) -> bool:
        """Whether rows computed now are written to the cache (none, or one whose folder
        refused a write: then they are all kept in memory, as nothing could read them back)."""
        return self.cache is not None and self.cache.writable

    def _remember(self, found: dict[str, Any]) -> None:
        for key, value in found.items():
            self._memory[key] = value
            self._memory.move_to_end(key)
        if self.memory_rows is not None and self._caching:
            while len(self._memory) > self.memory_rows:
                self._memory.popitem(last=False)

    def _compute(self, paths: Sequence[str], keys: Sequence[str], items: Sequence,
                 todo: list[int], description: str, found: dict[str, Any] | None) -> None:
        """Compute the rows at positions ``todo`` into the cache and, unless ``found`` is
        ``None``, decoded into it."""
        self.last_computed = [keys[i] for i in todo]  # what this call had to compute
        if not todo:
            return
        failed = self._fill([paths[i] for i in todo], [keys[i] for i in todo],
                            [items[i] for i in todo], description, found)
        if failed:
            raise ImageError(f"{len(failed)} image(s) could not be decoded ({self.what} of "
                             "the others are cached):\n  - " + "\n  - ".join(failed))

    def _fill(self, paths: list[str], keys: list[str], items: list, description: str,
              found: dict[str, Any] | None) -> list[str]:
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
                    if found is not None:
                        found.update(zip(done, map(self.decode, rows)))
                    elif not self._caching:  # the cache refused them (a full disk): kept here
                        self._remember(dict(zip(done, map(self.decode, rows))))
                bar.advance(task, len(indices) + len(errors))
        return failed

    def forget(self, keys: Sequence[str]) -> None:
        """Drop rows from memory (to compute or read them again)."""
        with self._lock:
            for key in keys:
                self._memory.pop(key, None)


def _first_missing(keys: Sequence[str], held) -> list[int]:
    """The first position of each key not in ``held``: identical files are computed once."""
    return sorted({k: i for i, k in reversed(list(enumerate(keys))) if k not in held}.values())


class LazyRows(Sequence):
    """The rows of a cached stage for many images, read by key when asked: :meth:`take` reads
    the rows of many at once (what a batch of pairs needs); the stage's ``memory_rows`` bounds
    what stays in memory between reads. Views of one stage join with ``+``."""

    def __init__(self, stage: CachedStage, paths: list[str], keys: list[str], items: list,
                 description: str):
        self.stage, self.paths, self.keys, self.items = stage, paths, keys, items
        self.description = description

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return self.take(range(len(self))[index])
        return self.take([index])[0]

    def take(self, indices: Sequence[int]) -> list[Any]:
        indices = [int(i) for i in indices]
        return self.stage.rows([self.paths[i] for i in indices], [self.keys[i] for i in indices],
                               [self.items[i] for i in indices], self.description)

    def __add__(self, other: LazyRows) -> LazyRows:
        if not isinstance(other, LazyRows) or other.stage is not self.stage:
            return NotImplemented
        return LazyRows(self.stage, self.paths + other.paths, self.keys + other.keys,
                        self.items + other.items, self.description)


def subset(rows: Sequence, indices: Sequence[int]) -> Sequence:
    """The items of ``rows`` at ``indices``, still lazy (read when asked) where ``rows`` is a
    :class:`LazyRows`."""
    indices = [int(i) for i in indices]
    if isinstance(rows, LazyRows):
        return LazyRows(rows.stage, [rows.paths[i] for i in indices],
                        [rows.keys[i] for i in indices], [rows.items[i] for i in indices],
                        rows.description)
    return [rows[i] for i in indices]


def take(rows: Sequence, indices: Sequence[int]) -> list[Any]:
    """``[rows[i] for i in indices]``, read together when ``rows`` is a :class:`LazyRows`."""
    if isinstance(rows, LazyRows):
        return rows.take(indices)
    return [rows[int(i)] for i in indices]
