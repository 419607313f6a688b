"""DISK (Tyszkiewicz et al. 2020, depth checkpoint), kornia's implementation; matched by
LightGlue."""

from __future__ import annotations

import torch

from wildreid.local.base import LOCAL_FEATURES, KorniaFeatures
from wildreid.weights import kornia_download


@LOCAL_FEATURES.register("disk", "DISK (kornia), matched by LightGlue")
class Disk(KorniaFeatures):
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
