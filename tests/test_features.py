"""Feature extraction with the disk cache: nothing computed twice, a killed run resumes."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from wildreid.data import load_dataset
from wildreid.features import FeatureExtractor
from wildreid.images import ImageError
from wildreid.models import create_descriptor


@pytest.fixture(scope="module")
def descriptor():
    return create_descriptor("efficientnet-lite0")


@pytest.fixture(scope="module")
def paths(real_subset):
    return load_dataset(real_subset).metadata["filepath"].tolist()


def _counting(extractor: FeatureExtractor) -> list[int]:
    seen = [0]
    extractor.descriptor.model.register_forward_hook(
        lambda _m, inputs, _o: seen.__setitem__(0, seen[0] + len(inputs[0])))
    return seen


def test_second_run_computes_nothing(descriptor, paths, tmp_path):
    first = FeatureExtractor(descriptor, "cpu", batch_size=8, cache_dir=tmp_path, progress=False)
    features = first(paths)
    assert features.shape == (len(paths), 1280)
    np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1, atol=1e-5)
    second = FeatureExtractor(create_descriptor("efficientnet-lite0"), "cpu", cache_dir=tmp_path,
                              progress=False)
    seen = _counting(second)
    np.testing.assert_array_equal(second(paths), features)
    assert seen[0] == 0


def test_identical_files_are_described_once(descriptor, paths, tmp_path):
    extractor = FeatureExtractor(descriptor, "cpu", cache_dir=None, progress=False)
    copy = tmp_path / "copy.jpg"
    copy.write_bytes(Path(paths[0]).read_bytes())
    features = extractor([paths[0], str(copy)])
    np.testing.assert_array_equal(features[0], features[1])


def test_bad_image_names_the_file_and_keeps_the_rest(descriptor, paths, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(Path(paths[0]).read_bytes()[:1500])
    extractor = FeatureExtractor(descriptor, "cpu", cache_dir=tmp_path / "cache", progress=False)
    with pytest.raises(ImageError, match=r"broken\.jpg"):
        extractor([*paths[:3], str(broken)])
    fresh = FeatureExtractor(create_descriptor("efficientnet-lite0"), "cpu",
                             cache_dir=tmp_path / "cache", progress=False)
    seen = _counting(fresh)
    fresh(paths[:3])
    assert seen[0] == 0


_WORKER = """
import sys
from wildreid.features import FeatureExtractor
from wildreid.models import create_descriptor
paths = sys.argv[2:]
FeatureExtractor(create_descriptor("efficientnet-lite0"), "cpu", batch_size=1, workers=0,
                 cache_dir=sys.argv[1], progress=False)(paths)
"""


def _rows_stored(cache: Path) -> int:
    """Rows committed to the cache so far, read as another process would read them."""
    files = list(cache.glob("*/arrays.sqlite"))
    if not files:
        return 0
    try:
        with sqlite3.connect(files[0], timeout=5) as connection:
            return connection.execute("SELECT COUNT(*) FROM arrays").fetchone()[0]
    except sqlite3.OperationalError:  # the writer is still creating the file
        return 0


@pytest.mark.slow
def test_killed_run_resumes_without_corrupt_cache(paths, tmp_path):
    cache = tmp_path / "cache"
    process = subprocess.Popen([sys.executable, "-c", _WORKER, str(cache), *paths])
    deadline = time.time() + 120
    while time.time() < deadline and _rows_stored(cache) < 3:
        time.sleep(0.02)
    assert process.poll() is None, "the run ended before it could be killed"
    process.send_signal(signal.SIGKILL)
    process.wait()
    done = _rows_stored(cache)
    assert 3 <= done < len(paths)

    resumed = FeatureExtractor(create_descriptor("efficientnet-lite0"), "cpu", cache_dir=cache,
                               progress=False)
    seen = _counting(resumed)
    features = resumed(paths)
    assert 0 < seen[0] <= len(paths) - done
    reference = FeatureExtractor(create_descriptor("efficientnet-lite0"), "cpu", cache_dir=None,
                                 progress=False)(paths)
    np.testing.assert_allclose(features, reference, atol=1e-5)
