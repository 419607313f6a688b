"""ALIKED-n16 (Zhao et al. 2023), kornia's implementation; matched by LightGlue."""

from __future__ import annotations

import torch

from wildreid.local.base import LOCAL_FEATURES, KorniaFeatures
from wildreid.weights import kornia_download


@LOCAL_FEATURES.register("aliked", "ALIKED-n16 (kornia), matched by LightGlue")
class Aliked(KorniaFeatures):
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
