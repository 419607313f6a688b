"""Fault injection on the feature cache: every way a cache file can be damaged (the damages of
``benchmarks/cache_faults.py``, which runs them end to end on every namespace) is reported by
path, dropped and recomputed, and the run ends with the answers an uncached run gives; two
processes share one cache, and several may open a new one at once; reads are by key."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import time
import tracemalloc
import warnings

import numpy as np
import pytest

from wildreid.cache import ArrayCache, CacheDamaged, CacheUnavailable
from wildreid.data import load_dataset
from wildreid.features import FeatureExtractor
from wildreid.models import create_descriptor
from wildreid.testing import KINDS, damage


@pytest.fixture(scope="module")
def descriptor():
    return create_descriptor("efficientnet-lite0")


@pytest.fixture(scope="module")
def described(descriptor, real_subset, tmp_path_factory):
    """Six real photos, their features without a cache, and a cache holding them."""
    paths = load_dataset(real_subset).metadata["filepath"].tolist()[:6]
    reference = FeatureExtractor(descriptor, "cpu", cache_dir=None, progress=False)(paths)
    cache = tmp_path_factory.mktemp("cache")
    extractor = FeatureExtractor(descriptor, "cpu", cache_dir=cache, progress=False)
    extractor(paths)
    extractor.cache.close()
    return paths, reference, extractor.cache.folder


@pytest.mark.parametrize("kind", KINDS)
def test_damaged_cache_is_reported_dropped_and_recomputed(kind, described, descriptor, tmp_path):
    paths, reference, built = described
    folder = tmp_path / "cache" / built.name
    shutil.copytree(built, folder)
    damage(folder, kind)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        extractor = FeatureExtractor(descriptor, "cpu", cache_dir=tmp_path / "cache",
                                     progress=False)
        seen = [0]
        hook = descriptor.model.register_forward_hook(
            lambda _m, inputs, _o: seen.__setitem__(0, seen[0] + len(inputs[0])))
        try:
            features = extractor(paths)
        finally:
            hook.remove()
    np.testing.assert_allclose(features, reference, atol=1e-5)  # the right answers
    damaged = [str(w.message) for w in caught if issubclass(w.category, CacheDamaged)]
    if kind == "emptied":  # SQLite reads an empty file as an empty database: nothing to report
        assert not damaged and seen[0] == len(paths)
    else:
        assert damaged and all(str(folder) in message for message in damaged), damaged
        assert 0 < seen[0] <= len(paths)
    assert len(extractor.cache) == len(paths)  # healed: every row is back
    again = FeatureExtractor(descriptor, "cpu", cache_dir=tmp_path / "cache", progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheDamaged)
        np.testing.assert_allclose(again(paths), reference, atol=1e-5)
    assert not list(folder.glob("*.npz"))


_WORKER = """
import sys
from wildreid.features import FeatureExtractor
from wildreid.models import create_descriptor
paths = sys.argv[2:]
FeatureExtractor(create_descriptor("efficientnet-lite0"), "cpu", batch_size=1, workers=0,
                 cache_dir=sys.argv[1], progress=False)(paths)
"""


@pytest.mark.slow
def test_two_processes_share_one_cache(described, descriptor, tmp_path):
    paths, reference, _ = described
    cache = tmp_path / "cache"
    runs = [subprocess.Popen([sys.executable, "-c", _WORKER, str(cache), *order],
                             stderr=subprocess.PIPE, text=True)
            for order in (paths, paths[::-1])]
    for run in runs:
        assert run.wait(300) == 0, run.stderr.read()
    shared = FeatureExtractor(descriptor, "cpu", cache_dir=cache, progress=False)
    assert len(shared.cache) == len(paths)
    seen = [0]
    hook = descriptor.model.register_forward_hook(
        lambda _m, inputs, _o: seen.__setitem__(0, seen[0] + len(inputs[0])))
    try:
        np.testing.assert_allclose(shared(paths), reference, atol=1e-5)
    finally:
        hook.remove()
    assert seen[0] == 0


_OPENER = """
import sys, time
import numpy as np
from wildreid.cache import ArrayCache
start = float(sys.argv[3])
while time.time() < start:  # every process opens the new file at the same instant
    pass
ArrayCache(sys.argv[1], "ns").put(["key" + sys.argv[2]], np.full((1, 3), float(sys.argv[2])))
"""


@pytest.mark.slow
def test_processes_opening_one_new_cache_at_once_all_succeed(tmp_path):
    """SQLite answers "database is locked" at once, without waiting, to a connection that opens
    the file while another switches it to WAL: the cache must wait and retry, not fail."""
    for trial in range(4):  # a smoke test: unhandled, the race failed about one trial in five
        root = tmp_path / f"trial{trial}"
        start = time.time() + 2.0
        runs = [subprocess.Popen([sys.executable, "-c", _OPENER, str(root), str(i), str(start)],
                                 stderr=subprocess.PIPE, text=True) for i in range(6)]
        try:
            for run in runs:
                assert run.wait(120) == 0, run.stderr.read()
        finally:
            for run in runs:
                run.kill()
        stored = ArrayCache(root, "ns").fetch([f"key{i}" for i in range(6)])
        assert {key: float(value[0]) for key, value in stored.items()} == {
            f"key{i}": float(i) for i in range(6)}


class _LockedAtFirst:
    """A real SQLite connection whose first ``times`` switches to WAL fail with ``error``."""

    attempts = 0

    def __init__(self, connection, times: int, error: str):
        self._connection, self._times, self._error = connection, times, error

    def execute(self, statement, *arguments):
        if statement.startswith("PRAGMA journal_mode"):
            type(self).attempts += 1
            if type(self).attempts <= self._times:
                raise sqlite3.OperationalError(self._error)
        return self._connection.execute(statement, *arguments)

    def __getattr__(self, name):
        return getattr(self._connection, name)


@pytest.mark.parametrize("error, retried", [("database is locked", True),
                                            ("disk I/O error", False)])
def test_a_busy_file_is_waited_for_and_other_errors_are_not(tmp_path, monkeypatch, error, retried):
    connect = sqlite3.connect
    _LockedAtFirst.attempts = 0
    monkeypatch.setattr("wildreid.cache.sqlite3.connect", lambda *a, **k: _LockedAtFirst(
        connect(*a, **k), 3, error))
    if retried:
        cache = ArrayCache(tmp_path, "ns")
        cache.put(["k"], np.ones((1, 2), np.float32))
        assert _LockedAtFirst.attempts == 4 and len(cache) == 1
    else:  # not waited for: the folder is given up at once, with a warning (not the run)
        with pytest.warns(CacheUnavailable, match="disk I/O error"):
            cache = ArrayCache(tmp_path, "ns")
        assert _LockedAtFirst.attempts == 1 and not cache.writable and not cache.fetch(["k"])


def test_reads_are_by_key_with_bounded_memory(tmp_path):
    cache = ArrayCache(tmp_path, "big")
    row = np.zeros(65_536, dtype=np.float16)  # 128 kB, like a row of 512 ALIKED keypoints
    for start in range(0, 400, 50):  # 51 MB on disk
        cache.put([f"k{i}" for i in range(start, start + 50)], np.stack([row + i for i in
                                                                         range(start, start + 50)]))
    cache.close()
    tracemalloc.start()
    reopened = ArrayCache(tmp_path, "big")
    found = reopened.fetch(["k7", "k399", "k400"])
    assert set(found) == {"k7", "k399"}
    np.testing.assert_array_equal(found["k399"], row + 399)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert len(reopened) == 400 and peak < 5_000_000, peak  # a few rows, not the 51 MB
    with pytest.warns(CacheDamaged, match="dropped 400"):  # rows of another width computed now
        reopened.put(["x"], np.zeros((1, 10), np.float32))
    assert len(reopened) == 1 and not reopened.fetch(["k7"])


def test_temporary_files_of_a_live_run_are_left_alone(tmp_path):
    folder = tmp_path / "ns"
    folder.mkdir()
    fresh, stale = folder / ".a.tmp.npz", folder / ".b.tmp.npz"
    fresh.write_bytes(b"being written by another process")
    stale.write_bytes(b"left by a run killed long ago")
    old = time.time() - 2 * 3600
    os.utime(stale, (old, old))
    assert len(ArrayCache(tmp_path, "ns")) == 0
    assert fresh.exists() and not stale.exists()
