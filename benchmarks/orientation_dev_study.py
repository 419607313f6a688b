"""Which database images a query is matched against, and how a pair's score is read: chosen on a
development split carved from the database (the benchmark's queries and answers are never read).

    python benchmarks/orientation_dev_study.py --species nyala --local aliked-nn --keypoints-on animal
    python benchmarks/orientation_dev_study.py --species lion --local sift --keypoints-on image \
        --long-side 256

Development split: the species' photos in the database of both protocols
(``common.development_database``, never a query of either) split by ``sift_dev_study.dev_split``
(one random image of every identity with two or more is a development query, the rest the
development gallery). Every development query is scored against every gallery image once by the
pipeline's own pair scorer (:func:`wildreid.matching.score_pairs`, RANSAC inliers included), then
each variant is read from the same table:

- candidates: every gallery image, or only those of the query's ``orientation`` (nyala: the same
  flank; lion: the same body part), gallery images of unknown orientation kept;
- pair score: each of :data:`~wildreid.matching.PAIR_SCORES` and the global cosine, raw or
  read against hubness (a gallery image that matches every query a little): minus the gallery
  image's median score over the development queries, or over the geometric mean of the two
  images' keypoint counts.

Top-1 (identity of the best image) per variant, beside the share of queries with a true image of
their orientation in the gallery (the ceiling of the same-orientation variants).
Writes ``benchmarks/results/orientation-dev-<species>-<local>-both-databases-cpu-<date>.json``.
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
from wildreid.local import KeypointExtractor, create_local_features
from wildreid.matching import PAIR_SCORES, create_matcher, score_pairs
from wildreid.pipeline import Identifier
from wildreid.stage import take


def tables(features: str, keypoints: list, queries: np.ndarray, gallery: np.ndarray
           ) -> dict[str, np.ndarray]:
    """Every pair score of every (query, gallery image) as the pipeline scores it."""
    matcher = create_matcher(features, device="cpu")
    pairs = np.stack(np.meshgrid(queries, gallery, indexing="ij"), -1).reshape(-1, 2)
    found = score_pairs(matcher, keypoints, pairs, ransac=True, description="development pairs")
    return {name: found[name].reshape(len(queries), len(gallery)) for name in PAIR_SCORES}


def top1(table: np.ndarray, allowed: np.ndarray, truth: np.ndarray, names: np.ndarray) -> float:
    """Share of queries whose best allowed gallery image is of their identity."""
    scored = np.where(allowed, table, -np.inf)
    return float(np.mean(names[scored.argmax(1)] == truth))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--species", default="nyala")
    parser.add_argument("--local", default="aliked-nn")
    parser.add_argument("--keypoints-on", default="animal", choices=("animal", "image"))
    parser.add_argument("--max-keypoints", type=int, default=512)
    parser.add_argument("--long-side", type=int, default=512)
    parser.add_argument("--bench", type=Path, default=DEFAULT_BENCH)
    parser.add_argument("--cache-dir", type=Path, default=Path("/tmp/wildreid-study-cache"))
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--tables", type=Path, default=None,
                        help="also save the score tables (.npz) for offline study")
    args = parser.parse_args(argv)
    metadata = development_database(args.bench, args.species)
    identities = metadata["identity"].fillna("").astype(str).to_numpy()
    orientation = metadata["orientation"].fillna("").astype(str).to_numpy()
    queries, gallery = dev_split(identities)
    print(f"{args.species}: development {len(queries)} queries x {len(gallery)} images", flush=True)
    start = time.perf_counter()
    regions = (Isolator(Segmenter(), cache_dir=args.cache_dir)(metadata, "regions")
               if args.keypoints_on == "animal" else None)
    extractor = KeypointExtractor(create_local_features(
        args.local, max_keypoints=args.max_keypoints, long_side=args.long_side, device="cpu"),
        args.cache_dir)
    keypoints = list(take(extractor(metadata["filepath"].astype(str).tolist(), regions,
                                    f"{args.local} keypoints"), range(len(metadata))))
    seconds = {"keypoints": round(time.perf_counter() - start, 1)}
    start = time.perf_counter()
    scores = tables(args.local, keypoints, queries, gallery)
    seconds["matching"] = round(time.perf_counter() - start, 1)
    embeddings = Identifier(device="cpu", cache_dir=args.cache_dir).describe(metadata,
                                                                             "global features")
    scores["cosine"] = embeddings[queries] @ embeddings[gallery].T
    counts = np.array([len(k) for k in keypoints], np.float32)
    if args.tables:
        np.savez_compressed(args.tables, queries=queries, gallery=gallery, identities=identities,
                            orientation=orientation, counts=counts, **scores)
    truth, names = identities[queries], identities[gallery]
    same = (orientation[gallery][None, :] == orientation[queries][:, None]) | (
        orientation[gallery][None, :] == "")
    every = np.ones_like(same)
    true = names[None, :] == truth[:, None]
    ceiling = {"any": float(true.any(1).mean()), "same": float((true & same).any(1).mean())}
    print(f"a true image in the gallery: {100 * ceiling['any']:.1f} %, of the query's "
          f"orientation {100 * ceiling['same']:.1f} %")
    trials = []
    for score, table in scores.items():
        variants = {"raw": table}
        if score != "cosine":
            variants["minus gallery median"] = table - np.median(table, axis=0, keepdims=True)
            variants["over keypoint counts"] = table / np.sqrt(
                np.maximum(counts[queries][:, None] * counts[gallery][None, :], 1.0))
        for reading, values in variants.items():
            for candidates, allowed in (("any", every), ("same orientation", same)):
                trial = {"pair_score": score, "reading": reading, "candidates": candidates,
                         "top1": top1(values, allowed, truth, names)}
                trials.append(trial)
                print(f"  {score:16s} {reading:22s} {candidates:17s} top-1 "
                      f"{100 * trial['top1']:.1f} %", flush=True)
    chosen = max(trials, key=lambda trial: trial["top1"])  # the first best, in the order tried
    print(f"chosen on development: {chosen}")
    write_cpu_result(args.out, f"orientation-dev-{args.species}-{args.local}-both-databases", {
        "development_split": DEVELOPMENT_SPLIT, "species": args.species, "local": args.local,
        "keypoints_on": args.keypoints_on,
        "features": {"max_keypoints": args.max_keypoints, "long_side": args.long_side},
        "development": {"queries": len(queries), "gallery": len(gallery),
                        "pairs": len(queries) * len(gallery), "true_in_gallery": ceiling,
                        "chosen": chosen},
        "seconds": seconds}, trials)
    return 0


if __name__ == "__main__":
    sys.exit(main())
