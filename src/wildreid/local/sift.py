"""OpenCV SIFT / RootSIFT (Arandjelović & Zisserman 2012); matched by mutual nearest neighbours
with a ratio test."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from wildreid.local.base import LOCAL_FEATURES, OpenCVFeatures


@LOCAL_FEATURES.register("sift", "OpenCV RootSIFT, mutual nearest neighbours + ratio test")
class Sift(OpenCVFeatures):
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

    def create(self):
        return cv2.SIFT_create(nfeatures=self.max_keypoints)

    def descriptors(self, raw: np.ndarray) -> np.ndarray:
        if self.root:
            return np.sqrt(raw / np.maximum(raw.sum(1, keepdims=True), 1e-6))
        return raw / np.maximum(np.linalg.norm(raw, axis=1, keepdims=True), 1e-6)
