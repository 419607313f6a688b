"""Runs on a local Ray cluster (2 CPUs, as CI has): the same answers as in one process, the cache
written by the driver, a worker killed mid-chunk replaced and its chunk retried."""

from __future__ import annotations

import functools
import os

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from wildreid.cli import app
from wildreid.data import load_dataset
from wildreid.distributed import RayPool
from wildreid.features import FeatureExtractor
from wildreid.models import create_descriptor

ray = pytest.importorskip("ray", reason="pip install 'wildreid[ray]'")
#: One Ray cluster at a time: the suite's parallel workers run these tests on one of them.
pytestmark = pytest.mark.xdist_group("ray")
runner = CliRunner()


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    yield
    ray.shutdown()


def _identify(data, output, cache, *options):
    result = runner.invoke(app, ["identify", str(data), "--output", str(output), "--cache-dir",
                                 str(cache), "--device", "cpu", *options])
    assert result.exit_code == 0, result.output
    return (pd.read_csv(output, dtype=str),
            pd.read_csv(output.with_name(output.stem + ".candidates.csv")))


# (A network's keypoints on workers, on the driver's device and precision:
# test_hostile_cache.py's test_ray_workers_run_on_the_drivers_device_and_precision.)
@pytest.mark.parametrize("preset", [[], ["--preset", "accurate", "--local", "sift",
                                         "--shortlist", "all"]], ids=["fast", "sift"])
@pytest.mark.slow
def test_a_run_on_a_local_ray_cluster_answers_as_one_process(real_subset, tmp_path, cluster,
                                                             preset, regions_cache):
    # The run alone reads the animal regions from the cache; on the cluster, workers compute them.
    alone = _identify(real_subset, tmp_path / "alone" / "s.csv", regions_cache, *preset)
    spread = _identify(real_subset, tmp_path / "ray" / "s.csv", tmp_path / "cache-b", *preset,
                       "--ray", "auto")  # joins the cluster this process started
    assert spread[0].equals(alone[0])
    pd.testing.assert_frame_equal(spread[1].drop(columns="score"), alone[1].drop(columns="score"))
    np.testing.assert_allclose(spread[1]["score"], alone[1]["score"], atol=1e-4)
    # The driver wrote what the workers computed into the same content-keyed cache.
    written = sorted(p.parent.name for p in (tmp_path / "cache-b").glob("*/arrays.sqlite"))
    kept = sorted(p.parent.name for p in regions_cache.glob("*/arrays.sqlite"))
    assert [n for n in written if not n.startswith("regions-")] == [
        n for n in kept if not n.startswith("regions-")]
    if "sift" in preset:  # keypoints on the animal: the workers segmented the photos
        assert [n for n in written if n.startswith("regions-")] == [
            n for n in kept if n.startswith("regions-")]


class _CrashingOnce(FeatureExtractor):
    """A worker that dies (the whole process) in its first chunk, as a lost machine would."""

    def __init__(self, marker, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.marker = marker

    def compute(self, paths, items):
        if not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os._exit(1)
        yield from super().compute(paths, items)


def _crashing(marker, descriptor):
    return _CrashingOnce(marker, descriptor, device="cpu", workers=0, cache_dir=None,
                         progress=False)


@pytest.mark.slow
def test_a_killed_worker_is_replaced_and_its_chunk_retried(real_subset, tmp_path, cluster):
    paths = load_dataset(real_subset).metadata["filepath"].tolist()
    descriptor = create_descriptor("efficientnet-lite0")
    expected = FeatureExtractor(descriptor, device="cpu", cache_dir=None, progress=False)(paths)
    # (batch size 7: workers keep what they built by what it computes; this is new to them)
    extractor = FeatureExtractor(create_descriptor("efficientnet-lite0"), device="cpu",
                                 batch_size=7, cache_dir=tmp_path / "cache", progress=False,
                                 pool=RayPool("auto"))
    marker = tmp_path / "crashed"
    extractor.worker = lambda: functools.partial(_crashing, str(marker), descriptor)
    found = extractor(paths)
    assert marker.exists()  # a worker did die
    np.testing.assert_allclose(found, expected, atol=1e-5)
