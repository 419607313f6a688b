"""Memory of pair matching when the keypoints do not fit: synthetic keypoint rows of ``--images``
images in a real keypoint cache, ``--queries`` x ``--shortlist`` pairs scored by the real SIFT
matcher through the cache's :class:`~wildreid.stage.LazyRows` view, with the keypoint memory
budget ``--budget-mib`` and, for comparison, with every keypoint held (``--budget-mib 0``:
the budget set above everything).

    python benchmarks/keypoint_memory.py --images 20000 100000 --budget-mib 512 0

Each scoring runs in its own process so its peak resident memory is its own. Writes
``benchmarks/results/keypoint-memory-k<keypoints>-cpu-<date>.json`` (never overwritten).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import write_cpu_result


def _extractor(root: Path, keypoints: int):
    from wildreid.local import KeypointExtractor, Sift

    return KeypointExtractor(Sift(max_keypoints=keypoints, device="cpu"), root, workers=0,
                             progress=False)


def write(root: Path, images: int, keypoints: int) -> None:
    """``images`` rows of ``keypoints`` random unit RootSIFT-like keypoints each."""
    from wildreid.local import Keypoints

    extractor, rng = _extractor(root, keypoints), np.random.default_rng(0)
    for start in range(0, images, 500):
        rows = []
        for _ in range(min(500, images - start)):
            descriptors = np.abs(rng.standard_normal((keypoints, 128), np.float32))
            descriptors /= np.linalg.norm(descriptors, axis=1, keepdims=True)
            rows.append(Keypoints(rng.uniform(0, 512, (keypoints, 2)).astype(np.float32),
                                  rng.uniform(0, 1, keypoints).astype(np.float32), descriptors,
                                  (512, 512)).to_row(keypoints, 128))
        extractor.cache.put([f"synthetic-{i}" for i in range(start, start + len(rows))],
                            np.stack(rows))


def score(root: Path, images: int, keypoints: int, queries: int, shortlist: int,
          budget_mib: float) -> dict:
    from wildreid import local
    from wildreid.matching import NearestNeighbourMatcher, score_pairs

    if budget_mib > 0:
        local.KEYPOINT_MEMORY_MIB = budget_mib
    else:  # every row held
        local.KEYPOINT_MEMORY_MIB = 2 * images * keypoints * 131 * 4 / 2**20
    extractor = _extractor(root, keypoints)
    keys = [f"synthetic-{i}" for i in range(images)]
    rows = extractor.lazy([""] * images, keys, [(None, False)] * images, "synthetic")
    rng = np.random.default_rng(1)
    pairs = np.concatenate([np.stack([np.full(shortlist, q), queries + rng.choice(
        images - queries, shortlist, replace=False)], 1) for q in range(queries)])
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.perf_counter()
    found = score_pairs(NearestNeighbourMatcher(device="cpu"), rows, pairs, progress=False)
    seconds = time.perf_counter() - started
    assert len(extractor.last_computed) == 0 and np.isfinite(found["confidence_sum"]).all()
    return {"images": images, "pairs": len(pairs), "distinct_images_matched":
            len(np.unique(pairs)), "budget_mib": budget_mib or "all",
            "rows_kept_at_most": extractor.memory_rows, "rows_kept_at_end":
            len(extractor._memory), "seconds": round(seconds, 1),
            "pairs_per_s": round(len(pairs) / seconds, 1),
            "peak_rss_before_scoring_mib": round(before),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, nargs="+", default=[20_000, 100_000])
    parser.add_argument("--keypoints", type=int, default=512)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--shortlist", type=int, default=100)
    parser.add_argument("--budget-mib", type=float, nargs="+", default=[512, 0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--phase", choices=["write", "score"], help=argparse.SUPPRESS)
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase == "write":
        return write(args.root, args.images[0], args.keypoints)
    if args.phase == "score":
        print(json.dumps(score(args.root, args.images[0], args.keypoints, args.queries,
                               args.shortlist, args.budget_mib[0])))
        return None
    results = []
    for images in args.images:
        with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as root:
            common = [sys.executable, __file__, "--root", root, "--images", str(images),
                      "--keypoints", str(args.keypoints)]
            started = time.perf_counter()
            subprocess.run([*common, "--phase", "write"], check=True)
            written = time.perf_counter() - started
            for budget in args.budget_mib:
                if budget == 0 and images > min(args.images):
                    continue  # holding everything is measured at the smallest size only
                output = subprocess.run([*common, "--phase", "score", "--queries",
                                         str(args.queries), "--shortlist", str(args.shortlist),
                                         "--budget-mib", str(budget)], check=True,
                                        capture_output=True, text=True).stdout
                result = json.loads(output.strip().splitlines()[-1])
                result["cache_write_s"] = round(written, 1)
                print(json.dumps(result), flush=True)
                results.append(result)
    write_cpu_result(args.out, f"keypoint-memory-k{args.keypoints}", {"keypoints": args.keypoints}, results)


if __name__ == "__main__":
    main()
