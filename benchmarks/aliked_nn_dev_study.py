"""ALIKED matched by nearest neighbours (``aliked-nn``): its settings chosen on a development split
carved from the database, where LightGlue is too slow to run (a CPU).

    python benchmarks/aliked_nn_dev_study.py [--species nyala] [--cache-dir DIR] [--out DIR]

Development split: the photos in the database of both protocols, as in ``sift_dev_study.py`` (one
random image of every identity with two or more is a development query, the rest the development
gallery; the benchmark's queries and answers are never read). Every development query is matched
against every development gallery image once, by mutual nearest neighbours with the loosest ratio
tried, so every ratio below it is read from the same matches (a match passes ratio ``r`` when its
confidence, 1 - its ratio, exceeds 1 - ``r``). Tried: the ratio, the pair score (sum of
confidences, count of matches above a confidence level, or RANSAC inliers: the pipeline's pair
scores) and where the keypoints lie (the animal or the whole photo). Then, for the chosen setting,
the shortlist: top-1 when each development query is matched only against its ``K`` nearest gallery
images by the pipeline's global cosine (``--shortlists``), beside the share of queries whose
shortlist holds a true image, and a true image of the same flank (``orientation``).
Writes ``benchmarks/results/aliked-nn-dev-<species>-both-databases-cpu-<date>.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from common import DEFAULT_BENCH, DEVELOPMENT_SPLIT, development_database, write_cpu_result
from sift_dev_study import dev_split

from wildreid.isolation import Isolator, Segmenter
from wildreid.local import AlikedNearest, KeypointExtractor
from wildreid.matching import CONFIDENCE_LEVELS, NearestNeighbourMatcher, ransac_inliers
from wildreid.pipeline import Identifier
from wildreid.progress import progress_bar
from wildreid.stage import take

#: Ratios tried; the matching runs once at the loosest.
RATIOS = (0.8, 0.85, 0.9, 0.95, 0.99)
#: The pair scores tried (RANSAC inliers: about 0.15 ms a pair, ~6 matches at ratio 0.9).
SCORES = ("confidence_sum", *(f"matches@{level}" for level in CONFIDENCE_LEVELS), "inliers")
#: Shortlist sizes tried for the chosen setting (0: every gallery image).
SHORTLISTS = (50, 100, 200, 300, 500, 0)
PLACES = ("animal", "image")


def ratio_scores(matcher: NearestNeighbourMatcher, keypoints: list, queries: np.ndarray,
                 gallery: np.ndarray) -> dict[str, np.ndarray]:
    """Per (query, gallery image) and ratio of :data:`RATIOS`: each pair score the pipeline can
    keep (:data:`~wildreid.matching.PAIR_SCORES`), as ``score_pairs`` gives it for a matcher at
    that ratio."""
    thresholds = 1 - np.array(RATIOS, np.float32)  # ratio < r exactly when confidence > 1 - r
    tables = {name: np.zeros((len(queries), len(gallery), len(RATIOS)), np.float32)
              for name in SCORES}
    with progress_bar("pairs") as bar:
        task = bar.add_task("development pairs", total=len(queries) * len(gallery))
        for row, query in enumerate(queries):
            for start in range(0, len(gallery), matcher.batch_size):
                part = gallery[start:start + matcher.batch_size]
                found = matcher.match_batch([keypoints[query]] * len(part),
                                            [keypoints[j] for j in part])
                for column, matches in enumerate(found, start):
                    confidence = matches[:, 2][:, None]
                    passed = confidence > thresholds[None, :]
                    tables["confidence_sum"][row, column] = (confidence * passed).sum(0)
                    for level in CONFIDENCE_LEVELS:
                        tables[f"matches@{level}"][row, column] = (
                            passed & (confidence > level)).sum(0)
                    for index, threshold in enumerate(thresholds):
                        kept = matches[matches[:, 2] > threshold]
                        tables["inliers"][row, column, index] = ransac_inliers(
                            keypoints[query], keypoints[gallery[column]], kept)
                bar.advance(task, len(part))
    return tables


def shortlist_trial(table: np.ndarray, cosine: np.ndarray, size: int, identities: np.ndarray,
                    orientation: np.ndarray, queries: np.ndarray, gallery: np.ndarray) -> dict:
    """Top-1 by ``table`` (query x gallery pair scores) among each query's ``size`` gallery
    images of highest ``cosine`` (0: all), and the share of queries whose shortlist holds a true
    image, and one of the same flank (orientation known and equal)."""
    size = size or len(gallery)
    nearest = np.argsort(-cosine, axis=1, kind="stable")[:, :size]
    scores = np.take_along_axis(table, nearest, axis=1)
    best = nearest[np.arange(len(queries)), scores.argmax(1)]
    truth = identities[queries]
    true = identities[gallery][nearest] == truth[:, None]
    same_flank = true & (orientation[gallery][nearest] == orientation[queries][:, None])
    trial = {"shortlist": size, "top1": float(np.mean(identities[gallery][best] == truth)),
             "true_in_shortlist": float(true.any(1).mean()),
             "same_flank_true_in_shortlist": float(same_flank.any(1).mean())}
    print(f"  shortlist {size}: top-1 {100 * trial['top1']:.1f} %, a true image in it for "
          f"{100 * trial['true_in_shortlist']:.1f} %, of the same flank "
          f"{100 * trial['same_flank_true_in_shortlist']:.1f} %", flush=True)
    return trial


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--species", default="nyala")
    parser.add_argument("--max-keypoints", type=int, default=512)
    parser.add_argument("--long-side", type=int, default=512)
    parser.add_argument("--places", default=",".join(PLACES), help="animal,image")
    parser.add_argument("--queries", type=int, default=0,
                        help="development queries drawn at random (seed 0); 0: all")
    parser.add_argument("--bench", type=Path, default=DEFAULT_BENCH)
    parser.add_argument("--cache-dir", type=Path, default=Path("/tmp/wildreid-study-cache"))
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    metadata = development_database(args.bench, args.species)
    identities = metadata["identity"].fillna("").astype(str).to_numpy()
    paths = metadata["filepath"].astype(str).tolist()
    queries, gallery = dev_split(identities)
    if 0 < args.queries < len(queries):  # the CPU's budget: ~180 pairs/s
        queries = np.sort(np.random.default_rng(0).choice(queries, args.queries, replace=False))
    print(f"{args.species}: development {len(queries)} queries x {len(gallery)} images", flush=True)
    features = AlikedNearest(args.max_keypoints, args.long_side, "cpu")
    matcher = NearestNeighbourMatcher(max(RATIOS), mutual=True, device="cpu")
    regions = Isolator(Segmenter(), cache_dir=args.cache_dir)(metadata, "regions")
    trials, seconds, kept = [], {}, {}
    for place in args.places.split(","):
        start = time.perf_counter()
        keypoints = KeypointExtractor(features, args.cache_dir)(
            paths, regions if place == "animal" else None, f"ALIKED keypoints on the {place}")
        keypoints = list(take(keypoints, range(len(paths))))
        seconds[f"keypoints on the {place}"] = round(time.perf_counter() - start, 1)
        start = time.perf_counter()
        tables = ratio_scores(matcher, keypoints, queries, gallery)
        seconds[f"matching on the {place}"] = round(time.perf_counter() - start, 1)
        kept[place] = tables
        for score, table in tables.items():
            for index, ratio in enumerate(RATIOS):
                best = table[:, :, index].argmax(1)
                top1 = float(np.mean(identities[gallery][best] == identities[queries]))
                trials.append({"keypoints_on": place, "pair_score": score, "ratio": ratio,
                               "top1": top1})
                print(f"  {place}, {score}, ratio {ratio}: top-1 {100 * top1:.1f} %", flush=True)
    # The first best in the order tried: the animal before the image, sums before counts, the
    # strictest ratio first.
    chosen = max(trials, key=lambda trial: trial["top1"])
    print(f"chosen on development: {chosen}")
    table = kept[chosen["keypoints_on"]][chosen["pair_score"]][:, :, RATIOS.index(chosen["ratio"])]
    embeddings = Identifier(device="cpu", cache_dir=args.cache_dir).describe(
        metadata, "global features")
    cosine = embeddings[queries] @ embeddings[gallery].T
    orientation = metadata["orientation"].fillna("").astype(str).to_numpy()
    shortlists = [shortlist_trial(table, cosine, size, identities, orientation, queries, gallery)
                  for size in SHORTLISTS]
    write_cpu_result(args.out, f"aliked-nn-dev-{args.species}-both-databases", {
        "development_split": DEVELOPMENT_SPLIT, "species": args.species,
        "features": {"max_keypoints": args.max_keypoints, "long_side": args.long_side},
        "development": {"queries": len(queries), "gallery": len(gallery),
                        "pairs": len(queries) * len(gallery), "chosen": chosen,
                        "shortlists": shortlists},
        "seconds": seconds}, trials)
    return 0


if __name__ == "__main__":
    sys.exit(main())
