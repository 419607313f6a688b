"""How faithful the pair scores are, on real nyala photos:

    python benchmarks/pair_fidelity.py [--images 12] [--device cpu] [--out DIR]

1. Batched LightGlue against kornia's own ``LightGlue.forward`` run on each pair alone: the
   largest difference in the sum of match confidences and the share of pairs whose matches differ,
   over all pairs of ``--images`` photos whose keypoint counts are cut to unequal numbers (so every
   batch pads), early exit on and off, and how many different layers the pairs of one batch stop at.
2. Where ALIKED's kept keypoints lie: the share inside the animal's own mask (U²-Net-p probability
   >= 0.5) when keypoints are kept by the mask grown by the former 2 % dilation, against the mask
   itself (now), and the keypoints kept per image when detecting on the whole frame or on the
   animal's box.

Writes ``benchmarks/results/pair-fidelity-<device>-<date>.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch
from common import DEFAULT_BENCH, unused_path
from nyala_lion import machine

from wildreid.images import load_image
from wildreid.isolation import Region, Segmenter, network_input
from wildreid.local import Aliked, Keypoints
from wildreid.matching import create_matcher


def grown(region: Region, share: float = 0.02) -> Region:
    """The region as the segmenter made it before: its mask dilated by ``share`` of the diagonal."""
    radius = max(1, round(share * np.hypot(*region.grid.shape)))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    return Region.from_mask(cv2.dilate(region.grid.astype(np.uint8), kernel), "segmenter")


def on_animal(found: Keypoints, probability: np.ndarray, threshold: float) -> float:
    """Share of the keypoints where U²-Net-p's own probability says animal."""
    side = probability.shape[0]
    xy = found.in_photo((side, side))
    column, row = (np.clip(xy[:, axis].astype(int), 0, side - 1) for axis in (0, 1))
    return float(np.mean(probability[row, column] >= threshold)) if len(xy) else 1.0


def reference(network, first: Keypoints, second: Keypoints) -> tuple[np.ndarray, int]:
    """kornia's ``LightGlue.forward`` on one pair: its mutual matches and the layer it stopped at."""
    weight = network.input_proj.weight

    def image(k):
        return {"keypoints": torch.from_numpy(k.xy)[None].to(weight.device),
                "descriptors": torch.from_numpy(k.descriptors)[None].to(weight),
                "image_size": torch.tensor([k.size], dtype=torch.float32, device=weight.device)}

    with torch.inference_mode():
        out = network({"image0": image(first), "image1": image(second)})
    matches0 = out["matches0"][0].cpu().numpy()
    confidence = out["matching_scores0"][0].float().cpu().numpy()
    rows = np.flatnonzero(matches0 > -1)
    return np.stack([rows, matches0[rows], confidence[rows]], 1), int(out["stop"])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=12)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bench", type=Path, default=DEFAULT_BENCH)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    metadata = pd.read_csv(args.bench / "metadata.csv", dtype=str)
    chosen = metadata[metadata["species"] == "nyala"].sample(args.images, random_state=0)
    photos = [load_image(args.bench / path) for path in chosen["path"]]
    segmenter = Segmenter(device=args.device)
    probability = segmenter.probability(np.stack([network_input(p) for p in photos]))
    regions = [segmenter.region_from_probability(p) for p in probability]

    placement = {"kept_per_image_frame": [], "kept_per_image_box": [],
                 "share_on_the_animal_grown_mask": [], "share_on_the_animal_mask": []}
    whole_frame = Aliked(512, 512, args.device, crop=False)
    on_box = Aliked(512, 512, args.device, crop=True)
    keypoints = []
    for photo, region, grid in zip(photos, regions, probability):
        if region.grid is not None:
            before = whole_frame.detect(photo, grown(region))
            placement["share_on_the_animal_grown_mask"].append(
                on_animal(before, grid, segmenter.threshold))
        frame = whole_frame.detect(photo, region)
        box = on_box.detect(photo, region)
        placement["share_on_the_animal_mask"].append(on_animal(box, grid, segmenter.threshold))
        placement["kept_per_image_frame"].append(len(frame))
        placement["kept_per_image_box"].append(len(box))
        keypoints.append(box)
    # Unequal counts, as on the animal: every batch pads.
    counts = np.linspace(512, 60, len(keypoints)).astype(int)
    keypoints = [Keypoints(k.xy[:n], k.scores[:n], k.descriptors[:n], k.size, k.box)
                 for k, n in zip(keypoints, counts)]
    pairs = [(a, b) for a in range(len(keypoints)) for b in range(len(keypoints)) if a != b]
    fidelity = {}
    for depth_confidence in (0.95, -1):
        matcher = create_matcher("aliked", device=args.device, batch_size=64,
                                 depth_confidence=depth_confidence)
        batched = []
        for begin in range(0, len(pairs), matcher.batch_size):
            chunk = pairs[begin:begin + matcher.batch_size]
            batched += matcher.match_batch([keypoints[a] for a, _ in chunk],
                                           [keypoints[b] for _, b in chunk])
        differences, differing, stops = [], 0, []
        for (a, b), found in zip(pairs, batched):
            expected, stop = reference(matcher.network, keypoints[a], keypoints[b])
            stops.append(stop)
            differences.append(abs(float(found[:, 2].sum()) - float(expected[:, 2].sum())))
            same = found.shape == expected.shape and (found[:, :2] == expected[:, :2]).all()
            differing += not same
        fidelity[f"early_exit_{depth_confidence > 0}"] = {
            "pairs": len(pairs), "max_abs_difference_confidence_sum": max(differences),
            "pairs_with_other_matches": differing, "stop_layers": sorted(set(stops))}
    report = {"date": datetime.date.today().isoformat(), "machine": machine(args.device),
              "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
              "images": chosen["image_id"].tolist(), "keypoint_counts": counts.tolist(),
              "lightglue_batched_vs_kornia_forward": fidelity,
              "placement": {k: v if k.startswith("kept") else float(np.mean(v))
                            for k, v in placement.items()},
              "placement_per_image": placement}
    args.out.mkdir(parents=True, exist_ok=True)
    path = unused_path(args.out / f"pair-fidelity-{args.device}-{report['date']}.json")
    path.write_text(json.dumps(report, indent=2))
    print(json.dumps({k: report[k] for k in ("lightglue_batched_vs_kornia_forward", "placement")},
                     indent=1))
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
