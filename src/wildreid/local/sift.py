"""OpenCV SIFT / RootSIFT (Arandjelović & Zisserman 2012); matched by mutual nearest neighbours
with a ratio test."""

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
        found, descriptors = self._network.detectAndCompute(
            gray, detection_mask(image, region, view, box))
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
        return keep_strongest(xy, scores, descriptors, view.size, region, self.max_keypoints, box)
