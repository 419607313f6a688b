"""Pair matching: one file per matcher, as kornia.feature's — :mod:`~wildreid.matching.lightglue`
(LightGlue for ALIKED/DISK, batched, equal to kornia's forward per pair) and
:mod:`~wildreid.matching.nearest` (mutual nearest neighbours with a ratio test, for SIFT and ORB)
on :mod:`~wildreid.matching.base` — the registry :data:`MATCHERS` saying which matcher each kind of
local features gets, RANSAC inliers (OpenCV USAC-MAGSAC), and :func:`score_pairs`: the scores of
many pairs, read from the cache in blocks, batched, or in chunks on a Ray pool.

A new matcher is one file here and one ``MATCHERS.register`` line below.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np

from wildreid.local import Keypoints
from wildreid.matching.lightglue import LIGHTGLUE_FEATURES, LightGlueMatcher
from wildreid.matching.nearest import NearestNeighbourMatcher
from wildreid.progress import progress_bar
from wildreid.registry import Registry
from wildreid.stage import take

__all__ = ["CONFIDENCE_LEVELS", "KEYPOINT_COUNTS", "LIGHTGLUE_FEATURES", "MATCHERS", "PAIR_SCORES",
           "LightGlueMatcher", "MatchingWorker", "NearestNeighbourMatcher", "create_matcher",
           "ransac_inliers", "score_pairs"]

#: Confidence levels at which matches are counted (LightGlue's own filter is 0.1).
CONFIDENCE_LEVELS = (0.2, 0.5, 0.8)


#: Lowe's ratio for ALIKED's unit descriptors matched by nearest neighbours, chosen on a
#: development split of the nyala database blind to both benchmarks (docs/decisions/0008).
ALIKED_NN_RATIO = 0.9

#: The matcher of each kind of local features, registered under the features' name:
#: ``@MATCHERS.register(name)`` over a factory taking ``device``, ``batch_size`` and settings.
MATCHERS = Registry("matcher")
MATCHERS.register("sift", "mutual nearest neighbours with a ratio test")(NearestNeighbourMatcher)
MATCHERS.register("orb", "mutual nearest neighbours with a ratio test")(NearestNeighbourMatcher)
MATCHERS.register("dedode", "mutual nearest neighbours with a ratio test")(NearestNeighbourMatcher)
MATCHERS.register("aliked-nn", "mutual nearest neighbours with a ratio test")(
    lambda **settings: NearestNeighbourMatcher(**{"ratio": ALIKED_NN_RATIO, **settings}))
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
#: Besides them, each side's keypoint count: a pair with a side of none has no local evidence at
#: all (a blank or tiny photo), which is not the same as a pair with no match.
KEYPOINT_COUNTS = ("first_keypoints", "second_keypoints")


#: Pairs per chunk sent to one worker of a Ray pool.
CHUNK_PAIRS = 4096
#: Pairs whose keypoints are read at once (from the cache, when they are not all in memory):
#: with shortlists of 100, about 2,100 images, 0.55 GiB of 512 ALIKED keypoints.
BLOCK_PAIRS = 2048


class MatchingWorker:
    """A pool worker's matcher (built where it runs) and what it does with a chunk of pairs.
    ``device``: the driver's device type (a GPU worker of a CPU run must not match in fp16)."""

    def __init__(self, features: str, batch_size: int = 128, settings: dict | None = None,
                 device: str = "auto"):
        self.matcher = create_matcher(features, device=device, batch_size=batch_size,
                                      **(settings or {}))

    def score(self, keypoints: Sequence[Keypoints], pairs: np.ndarray, ransac: bool
              ) -> dict[str, np.ndarray]:
        return score_pairs(self.matcher, keypoints, pairs, ransac=ransac, progress=False)


def score_pairs(matcher, keypoints: Sequence[Keypoints], pairs: np.ndarray, ransac: bool = False,
                progress: bool = True, description: str = "pairs", pool=None,
                scorer: Callable[[], MatchingWorker] | None = None) -> dict[str, np.ndarray]:
    """Scores of each ``(i, j)`` row of ``pairs`` (indices into ``keypoints``): sum of match
    confidences, matches above each confidence level and, with ``ransac``, RANSAC inliers.
    Pairs are read in blocks (:data:`BLOCK_PAIRS`, the next one read while one is matched) and
    sorted by keypoint count within each, so batches pad little. ``pool`` (a
    :class:`~wildreid.distributed.RayPool`) with ``scorer`` (the recipe of a
    :class:`MatchingWorker` for ``matcher``'s features): scored in chunks on its workers."""
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    result = {name: np.zeros(len(pairs), np.float32) for name in (*PAIR_SCORES, *KEYPOINT_COUNTS)}
    start = time.perf_counter()
    if pool is not None and len(pairs):
        with progress_bar("pairs", progress) as bar:
            task = bar.add_task(description, total=len(pairs))
            for rows, found in pool.map_pairs(scorer, keypoints, pairs, ransac, CHUNK_PAIRS):
                for name in (*PAIR_SCORES, *KEYPOINT_COUNTS):
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
                result["first_keypoints"][part] = [counts[i] for i in pairs[part, 0].tolist()]
                result["second_keypoints"][part] = [counts[j] for j in pairs[part, 1].tolist()]
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
