"""What the matchers share: keypoint arrays padded into one batch, and a batch's dense matches
unpacked into per-pair rows. A matcher is any object with ``batch_size`` and
``match_batch(first, second)`` giving, per pair of :class:`~wildreid.local.Keypoints`, ``(S, 3)``
rows ``index in first, index in second, confidence``."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def pad(items: Sequence[np.ndarray], width: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, longest, width)`` zeros with each item's rows first, and ``(B, longest)`` validity."""
    longest = max(1, max(len(item) for item in items))
    out = np.zeros((len(items), longest, width), np.float32)
    valid = np.zeros((len(items), longest), bool)
    for row, item in enumerate(items):
        out[row, :len(item)] = item
        valid[row, :len(item)] = True
    return torch.from_numpy(out).to(device), torch.from_numpy(valid).to(device)


def unpack(matches0: torch.Tensor, confidence0: torch.Tensor) -> list[np.ndarray]:
    """Dense ``(B, M)`` match indices (-1: none) and confidences -> per pair ``(S, 3)`` rows,
    with one device-to-host copy for the whole batch."""
    matches0, confidence0 = matches0.cpu().numpy(), confidence0.float().cpu().numpy()
    found = []
    for row_matches, row_confidence in zip(matches0, confidence0):
        rows = np.flatnonzero(row_matches > -1)
        found.append(np.stack([rows, row_matches[rows], row_confidence[rows]], 1).astype(np.float32))
    return found
