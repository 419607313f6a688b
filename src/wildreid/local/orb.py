"""OpenCV ORB (Rublee et al. 2011): oriented FAST corners with rotated BRIEF bits, no weights to
fetch. Its 256 bits are stored unpacked as 0/1 values, so the Euclidean distance the mutual
nearest-neighbour matcher computes is the square root of the Hamming distance; the ratio test
applies to it unchanged.

Also the worked example of a new local feature: this file, its import in ``local/__init__.py``
and one ``MATCHERS.register`` line in ``matching.py`` (ARCHITECTURE.md)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from wildreid.isolation import Region
from wildreid.local.base import (
    LOCAL_FEATURES,
    Keypoints,
    LocalFeatures,
    detection_mask,
    detector_view,
    keep_strongest,
)


@LOCAL_FEATURES.register("orb", "OpenCV ORB (binary, no weights), mutual nearest neighbours + "
                         "ratio test on the Hamming distance")
class Orb(LocalFeatures):
    """OpenCV ORB on the animal's part of the photo; the region is OpenCV's detection mask."""

    name = "orb"
    dim = 256

    def __init__(self, max_keypoints: int = 1024, long_side: int = 512, device: str = "auto",
                 weights: str | Path | None = None, crop: bool = True):
        super().__init__(max_keypoints, long_side, device, weights, crop)

    def detect(self, image: Image.Image, region: Region | None = None) -> Keypoints:
        if self._network is None:
            self._network = cv2.ORB_create(nfeatures=self.max_keypoints)
        view, box = detector_view(image, region, self.long_side, self.crop)
        gray = cv2.cvtColor(np.asarray(view), cv2.COLOR_RGB2GRAY)
        found, bits = self._network.detectAndCompute(gray, detection_mask(image, region, view, box))
        if bits is None:
            return Keypoints(np.zeros((0, 2), np.float32), np.zeros(0, np.float32),
                             np.zeros((0, self.dim), np.float32), view.size, box)
        descriptors = np.unpackbits(bits, axis=1).astype(np.float32)
        xy = np.array([k.pt for k in found], np.float32)
        scores = np.array([k.response for k in found], np.float32)
        return keep_strongest(xy, scores, descriptors, view.size, region, self.max_keypoints, box)
