"""DeDoDe (Edstedt et al. 2024: the L detector and the B descriptor, upright), kornia's
implementation; matched by mutual nearest neighbours with a ratio test on its L2-normalised
256-value descriptions (LightGlue's DeDoDe weights are not among those loaded here).

Its weights are not on PyPI: ``weights="kornia"`` (or ``$WILDREID_WEIGHTS=kornia``) has kornia
download them (Hugging Face, then GitHub; cached by torch.hub), and a folder — ``weights`` or
``$WILDREID_WEIGHTS`` — holding the upstream files :data:`FILES` works offline.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import torch

from wildreid.local.base import LOCAL_FEATURES, KorniaFeatures
from wildreid.weights import sha256_of

#: The upstream checkpoints, by part, as DeDoDe's releases (and kornia's cache) name them.
FILES = {"detector": "dedode_detector_L.pth", "descriptor": "dedode_descriptor_B.pth"}


@LOCAL_FEATURES.register("dedode", "DeDoDe L + B (kornia; weights downloaded by kornia or from "
                         "a folder), mutual nearest neighbours + ratio test")
class DeDoDe(KorniaFeatures):
    """DeDoDe-L keypoints with DeDoDe-B descriptions, kornia's implementation."""

    name = "dedode"
    dim = 256

    def _folder(self) -> Path:
        """The folder holding :data:`FILES`, or a clear error saying where to get them."""
        source = self.weights or os.environ.get("WILDREID_WEIGHTS")
        folder = Path(source) if source else None
        missing = [name for name in FILES.values()
                   if folder is None or not (folder / name).is_file()]
        if missing:
            where = "no weights folder given" if folder is None else f"{folder} lacks " + (
                ", ".join(missing))
            raise FileNotFoundError(
                f"DeDoDe's weights are not on PyPI ({where}): online, set WILDREID_WEIGHTS=kornia "
                f"(kornia downloads them); offline, put {' and '.join(FILES.values())} (DeDoDe's "
                "GitHub releases) in a folder named by $WILDREID_WEIGHTS")
        return folder

    @property
    def weights_id(self) -> str:
        if self._from_kornia():
            return "kornia"
        folder = self._folder()
        return "-".join(sha256_of(folder / name)[:12] for name in FILES.values())

    def _from_kornia(self) -> bool:
        from wildreid.weights import kornia_download

        return kornia_download(self.weights)

    def _load(self):
        from kornia.feature import DeDoDe as Network

        # float32 under CUDA autocast too: the detector's softmax over every pixel gives values
        # near 1e-5, which float16 resolves too coarsely to rank keypoints by.
        if self._from_kornia():
            try:
                return Network.from_pretrained("L-upright", "B-upright", amp_dtype=torch.float32)
            except RuntimeError as error:  # every source failed (offline, blocked...)
                raise FileNotFoundError(
                    f"kornia could not download DeDoDe's weights ({error}); offline, put "
                    f"{' and '.join(FILES.values())} in a folder named by $WILDREID_WEIGHTS"
                ) from error
        network = Network("L", "B", amp_dtype=torch.float32)
        folder = self._folder()
        for part, name in FILES.items():
            state = torch.load(folder / name, map_location="cpu", weights_only=True)
            getattr(network, part).load_state_dict(state)
        return network

    def _run(self, batch: torch.Tensor):
        xy, scores, descriptions = self._network(batch, n=4 * self.max_keypoints)
        # kornia gives pixel i's centre as i + 0.5 (the other detectors: i), through normalised
        # coordinates that put pixel 0 a rounding error below 0.
        return SimpleNamespace(keypoints=(xy[0] - 0.5).clamp(min=0), keypoint_scores=scores[0],
                               descriptors=torch.nn.functional.normalize(descriptions[0], dim=-1))
