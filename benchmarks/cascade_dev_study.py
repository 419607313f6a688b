"""A second matcher on the first one's best candidates (a cascade), on a development split of
the database: does LightGlue, too slow for the CPU against a whole gallery, re-rank the few images
that ALIKED without LightGlue (``aliked-nn``) puts first?

Reads the score tables that ``orientation_dev_study.py --tables FILE`` saved (every development
query against every gallery image; the benchmark's queries and answers are never read), takes
each development query's ``--top`` best gallery images by the first stage's ``--first-score``,
matches those pairs with ``--second`` (LightGlue, on the same cached keypoints), and reports
top-1 for every second-stage pair score (for ``--top`` and, read from the same pairs, 3 and 5
candidates), alone and beside the first stage's, with the share of
queries whose true identity is among the candidates (the ceiling).

    python benchmarks/orientation_dev_study.py --species nyala --local aliked-nn \\
        --cache-dir /tmp/nyala-cache --tables /tmp/nyala-tables.npz
    python benchmarks/cascade_dev_study.py --tables /tmp/nyala-tables.npz --species nyala \\
        --cache-dir /tmp/nyala-cache --top 10

Writes ``benchmarks/results/cascade-dev-<species>-<second>-top<K>-both-databases-cpu-<date>.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from common import DEFAULT_BENCH, DEVELOPMENT_SPLIT, development_database, write_cpu_result

from wildreid.isolation import Isolator, Segmenter
from wildreid.local import KeypointExtractor, create_local_features
from wildreid.matching import PAIR_SCORES, create_matcher, score_pairs
from wildreid.stage import take


def identity_top1(scores: np.ndarray, candidates: np.ndarray, names: np.ndarray,
                  truth: np.ndarray, summed: int = 1) -> float:
    """Share of queries whose identity of highest summed best-``summed`` candidate scores
    (``scores[q, k]`` for gallery image ``candidates[q, k]``) is ``truth``."""
    hits = 0
    for row in range(len(scores)):
        owners = names[candidates[row]]
        best = {}
        for owner in dict.fromkeys(owners):
            values = np.sort(scores[row][owners == owner])[::-1][:summed]
            best[owner] = float(values.sum())
        hits += max(best, key=best.get) == truth[row]
    return hits / len(scores)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tables", type=Path, required=True)
    parser.add_argument("--species", default="nyala")
    parser.add_argument("--first", default="aliked-nn", help="the matcher of the tables")
    parser.add_argument("--first-score", default="inliers")
    parser.add_argument("--second", default="aliked", help="the re-ranking matcher")
    parser.add_argument("--top", type=int, default=10, help="images re-ranked per query")
    parser.add_argument("--max-keypoints", type=int, default=512)
    parser.add_argument("--long-side", type=int, default=512)
    parser.add_argument("--bench", type=Path, default=DEFAULT_BENCH)
    parser.add_argument("--cache-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    tables = np.load(args.tables, allow_pickle=True)
    metadata = development_database(args.bench, args.species)
    identities = metadata["identity"].fillna("").astype(str).to_numpy()
    if not np.array_equal(identities, tables["identities"]):
        raise SystemExit(f"{args.tables}: made from another database than {args.bench}'s "
                         f"{args.species}; make it again with orientation_dev_study.py --tables")
    queries, gallery = tables["queries"], tables["gallery"]
    truth, names = identities[queries], identities[gallery]
    first = tables[args.first_score]
    # The first stage's order, the cosine breaking its ties (as the pipeline does).
    order = np.lexsort((-tables["cosine"], -first), axis=1)[:, :args.top]
    ceiling = float(np.mean((names[order] == truth[:, None]).any(1)))
    # What a cascade needs of its first stage: the true identity among its candidates (recall),
    # for each score the first stage could be read by.
    recall = {}
    for score in [*PAIR_SCORES, "cosine"]:
        ranked = np.lexsort((-tables["cosine"], -tables[score]), axis=1)
        recall[score] = {top: float(np.mean((names[ranked[:, :top]] == truth[:, None]).any(1)))
                         for top in (1, 3, 5, args.top)}
        print(f"  first stage read by {score:16s}: a true image among the first 1/3/5/"
              f"{args.top}: " + " / ".join(f"{100 * v:.1f}" for v in recall[score].values())
              + " %", flush=True)
    print(f"{args.species}: {len(queries)} development queries, top {args.top} of "
          f"{len(gallery)} images by {args.first} {args.first_score}; a true image among them "
          f"for {100 * ceiling:.1f} %", flush=True)
    regions = Isolator(Segmenter(), cache_dir=args.cache_dir)(metadata, "regions")
    extractor = KeypointExtractor(create_local_features(
        args.second, max_keypoints=args.max_keypoints, long_side=args.long_side, device="cpu"),
        args.cache_dir)
    keypoints = list(take(extractor(metadata["filepath"].astype(str).tolist(), regions,
                                    f"{args.second} keypoints"), range(len(metadata))))
    pairs = np.stack([np.repeat(queries, args.top), gallery[order].ravel()], 1)
    start = time.perf_counter()
    found = score_pairs(create_matcher(args.second, device="cpu"), keypoints, pairs,
                        ransac=True, description=f"{args.second} on the top {args.top}")
    seconds = round(time.perf_counter() - start, 1)
    first_top = np.take_along_axis(first, order, 1)
    trials = []
    # A cascade of a smaller K re-ranks the first K of these same candidates: read from the
    # same pairs, every smaller K costs nothing.
    for top in [k for k in (3, 5) if k < args.top] + [args.top]:
        kept = order[:, :top]
        trials += [{"top": top, "stage": "first", "pair_score": args.first_score,
                    "aggregation": aggregation, "true_among_candidates":
                        float(np.mean((names[kept] == truth[:, None]).any(1))),
                    "top1": identity_top1(first_top[:, :top], kept, names, truth, summed)}
                   for aggregation, summed in (("max", 1), ("top2", 2))]
        for score in PAIR_SCORES:
            second = found[score].reshape(len(queries), args.top)[:, :top]
            for aggregation, summed in (("max", 1), ("top2", 2)):
                trials.append({"top": top, "stage": "second", "pair_score": score,
                               "aggregation": aggregation,
                               "top1": identity_top1(second, kept, names, truth, summed)})
    for trial in trials:
        print(f"  top {trial['top']:3d} {trial['stage']:6s} {trial['pair_score']:16s} "
              f"{trial['aggregation']:5s} top-1 {100 * trial['top1']:.1f} %")
    write_cpu_result(args.out, f"cascade-dev-{args.species}-{args.second}-top{args.top}"
                     "-both-databases", {
        "development_split": DEVELOPMENT_SPLIT, "species": args.species,
        "tables": args.tables.name, "first": args.first,
        "first_score": args.first_score, "second": args.second, "top": args.top,
        "development": {"queries": len(queries), "gallery": len(gallery),
                        "pairs": len(pairs), "true_among_candidates": ceiling,
                        "true_among_first_by_score": recall},
        "seconds": {"second_stage": seconds,
                    "pairs_per_second": round(len(pairs) / max(seconds, 1e-9), 2)}}, trials)
    return 0


if __name__ == "__main__":
    sys.exit(main())
