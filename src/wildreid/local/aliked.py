"""ALIKED-n16 (Zhao et al. 2023), kornia's implementation; matched by LightGlue (``aliked``) or,
where LightGlue is too slow (a CPU: 2-4 pairs/s against hundreds), by mutual nearest neighbours
with a ratio test (``aliked-nn``, the same keypoints)."""

from __future__ import annotations

import torch

from wildreid.local.base import LOCAL_FEATURES, KorniaFeatures
from wildreid.weights import kornia_download, load_weights


@LOCAL_FEATURES.register("aliked", "ALIKED-n16 (kornia), matched by LightGlue")
class Aliked(KorniaFeatures):
    """ALIKED-n16 (Zhao et al. 2023), kornia's implementation."""

    name, weights_name = "aliked", "aliked-n16"

    def _load(self):
        from kornia.feature import ALIKED

        settings = {"max_num_keypoints": 4 * self.max_keypoints, "detection_threshold": 0.0}
        if kornia_download(self.weights):
            return ALIKED.from_pretrained("aliked-n16", **settings)
        # hw_grid: a buffer ALIKED computes when built, not in the released file.
        return load_weights(ALIKED("aliked-n16", **settings), self._weights_path(), "ALIKED-n16",
                            derived=("dkd.hw_grid",))

    def _run(self, batch: torch.Tensor):
        return self._network(batch)[0]


@LOCAL_FEATURES.register("aliked-nn", "ALIKED-n16 keypoints (those of aliked), mutual nearest "
                         "neighbours + ratio test: ALIKED at CPU speed")
class AlikedNearest(Aliked):
    """ALIKED's keypoints matched without LightGlue; the cache rows are ``aliked``'s."""

    name, keypoints_of = "aliked-nn", "aliked"
