"""OpenCV ORB (Rublee et al. 2011): oriented FAST corners with rotated BRIEF bits, no weights to
fetch. Its 256 bits are stored unpacked as 0/1 values, so the Euclidean distance the mutual
nearest-neighbour matcher computes is the square root of the Hamming distance; the ratio test
applies to it unchanged.

Also the worked example of a new local feature: this file, its import in ``local/__init__.py``
and one ``MATCHERS.register`` line in ``matching/__init__.py`` (ARCHITECTURE.md)."""

from __future__ import annotations

import cv2
import numpy as np

from wildreid.local.base import LOCAL_FEATURES, OpenCVFeatures


@LOCAL_FEATURES.register("orb", "OpenCV ORB (binary, no weights), mutual nearest neighbours + "
                         "ratio test on the Hamming distance")
class Orb(OpenCVFeatures):
    """OpenCV ORB on the animal's part of the photo; the region is OpenCV's detection mask."""

    name = "orb"
    dim = 256

    def create(self):
        return cv2.ORB_create(nfeatures=self.max_keypoints)

    def descriptors(self, raw: np.ndarray) -> np.ndarray:
        return np.unpackbits(raw, axis=1).astype(np.float32)
