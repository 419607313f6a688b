"""On-disk cache of per-image arrays keyed by file content, safe against kills mid-run.

Each flush writes one shard (``*.npz``) to a temporary name and renames it into place, so a shard
is either whole or absent: a killed run loses at most the batch in flight, and the next run
resumes from the shards already there.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

_COMPACT_ABOVE = 64  # shards; merged into one on open so a big cache stays quick to load


def content_key(path: str | Path) -> str:
    """Hash of the file's bytes: renaming or moving an image keeps its cached features."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def content_keys(paths: Iterable[str | Path], workers: int = 8) -> list[str]:
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(content_key, paths))


class ArrayCache:
    """Arrays of one kind (``namespace``, e.g. a descriptor's cache key) stored by content key."""

    def __init__(self, root: str | Path, namespace: str):
        self.folder = Path(root) / namespace
        self.folder.mkdir(parents=True, exist_ok=True)
        self._rows: dict[str, np.ndarray] = {}
        for leftover in self.folder.glob(".*.tmp.npz"):  # from a run killed mid-write
            leftover.unlink(missing_ok=True)
        shards = sorted(p for p in self.folder.glob("*.npz") if not p.name.startswith("."))
        for shard in shards:
            with np.load(shard) as data:
                for key, row in zip(data["keys"], data["values"]):
                    self._rows[str(key)] = row
        if len(shards) > _COMPACT_ABOVE:
            self._write(list(self._rows), np.stack(list(self._rows.values())))
            for shard in shards:
                shard.unlink(missing_ok=True)

    def __contains__(self, key: str) -> bool:
        return key in self._rows

    def __len__(self) -> int:
        return len(self._rows)

    def get(self, keys: list[str]) -> np.ndarray:
        return np.stack([self._rows[k] for k in keys])

    def put(self, keys: list[str], values: np.ndarray) -> None:
        """Store ``values`` (one row per key) durably before returning."""
        if not keys:
            return
        self._write(keys, values)
        self._rows.update(zip(keys, values))

    def _write(self, keys: list[str], values: np.ndarray) -> None:
        name = uuid.uuid4().hex
        temporary = self.folder / f".{name}.tmp.npz"
        np.savez(temporary, keys=np.asarray(keys), values=np.asarray(values))
        os.replace(temporary, self.folder / f"{name}.npz")
