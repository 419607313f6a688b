"""Local matching throughput (pairs/s) on real benchmark keypoints.

    python benchmarks/matching_speed.py [--features aliked] [--keypoints 1024] [--device cuda]
        [--batch-sizes 64,128,256] [--pairs 4096] [--n 64]

Keypoints of ``--n`` nyala images are detected first (whole image, so every image has the full
``--keypoints``); then ``--pairs`` random pairs are matched per batch size, and only matching is
timed (with the per-pair score bookkeeping, without RANSAC). Also times keypoint detection.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from common import DEFAULT_BENCH, unused_path

from wildreid.images import load_image
from wildreid.local import create_local_features
from wildreid.matching import LIGHTGLUE_FEATURES, create_matcher, score_pairs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--features", default="aliked")
    parser.add_argument("--keypoints", type=int, default=1024)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-sizes", default="64,128,256")
    parser.add_argument("--pairs", type=int, default=4096)
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--early-exit", type=float, default=0.95,
                        help="LightGlue depth_confidence; -1 turns early exit off")
    parser.add_argument("--bench", type=Path, default=DEFAULT_BENCH)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    files = sorted((args.bench / "images" / "nyala").iterdir())
    images = [load_image(p) for p in random.Random(0).sample(files, args.n)]
    features = create_local_features(args.features, max_keypoints=args.keypoints,
                                     device=args.device)
    features.detect(images[0])
    start = time.perf_counter()
    keypoints = [features.detect(image) for image in images]
    detect_ms = 1000 * (time.perf_counter() - start) / len(images)
    rng = np.random.default_rng(0)
    pairs = rng.integers(0, len(images), size=(args.pairs, 2))
    rows = {}
    for batch_size in [int(b) for b in args.batch_sizes.split(",")]:
        # Only LightGlue exits early; the nearest-neighbour matchers have no such setting.
        settings = ({"depth_confidence": args.early_exit} if args.features in LIGHTGLUE_FEATURES
                    else {})
        matcher = create_matcher(args.features, device=args.device, batch_size=batch_size,
                                 **settings)
        score_pairs(matcher, keypoints, pairs[:batch_size], progress=False)  # warm-up
        result = score_pairs(matcher, keypoints, pairs, progress=False)
        rows[batch_size] = round(len(pairs) / float(result["seconds"]), 1)
    device = features.device
    machine = (torch.cuda.get_device_name(0) if device.type == "cuda"
               else f"{platform.machine()} CPU, {torch.get_num_threads()} threads")
    date = datetime.date.today().isoformat()
    report = {"date": date, "machine": machine, "features": args.features,
              "keypoints": args.keypoints, "mean_keypoints": float(np.mean([len(k) for k in keypoints])),
              "early_exit": args.early_exit, "detect_ms_per_image": round(detect_ms, 1),
              "pairs_per_s_by_batch": rows,
              "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])}
    args.out.mkdir(parents=True, exist_ok=True)
    name = f"matching-{args.features}-{args.keypoints}-{device.type}-{date}.json"
    unused_path(args.out / name).write_text(json.dumps(report, indent=2))
    best = max(rows.values())
    print(f"| {date} | {machine} | {args.features} {args.keypoints} kp, early exit "
          f"{args.early_exit} | detect {detect_ms:.0f} ms/image | "
          + ", ".join(f"batch {b}: {v:.0f}" for b, v in rows.items()) + f" | best {best:.0f} pairs/s |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
