"""Which photos should the database's pseudo-queries meet, for the fitted threshold to land where
the best one in hindsight would? A study on development photos (never a benchmark query).

    python benchmarks/threshold_design_study.py [--species nyala] [--local sift|aliked-nn|none]
        [--keypoints-on animal|image] [--pair-score confidence_sum] [--repeats 50]

The ``new_individual`` threshold is fitted on pseudo-queries carved from the database. Today
(``held-out``) 30 % of the identities are held out whole (pseudo-unknown) and 30 % of the photos of
the others (pseudo-known), and every pseudo-query meets the remaining photos only: a pseudo-unknown
meets 70 % of the identities a real unknown query meets, a pseudo-known 70 % of its identity's
photos. On nyala protocol A (the cascade) the fitted threshold landed 0.078 under the best in
hindsight. Two other designs are measured beside it:

- ``whole-database``: the same pseudo-queries, each meeting every database photo except those of
  its own identity that are pseudo-queries (an unknown one meets every other identity);
- ``leave-one-out``: pseudo-unknowns as in ``whole-database``; every photo of a known identity
  with two or more is a pseudo-known query meeting every database photo but itself;

and ``held-out`` from one pseudo-split instead of 5 pooled (what ``LocalReranking.fit`` does: its
calibration pairs are scored once, for one split).

Each design is scored on simulated open-set protocols cut from the development photos
(``common.development_database``: photos in the database of both protocols): ``--repeats`` times,
an outer split as the pseudo-splits cut them makes a simulated database and its queries; the
threshold is fitted on the simulated database alone (5 pseudo-splits pooled, as
``wildreid.openset.fit_threshold``), then the simulated queries give the score at that threshold
and at the best threshold in hindsight. Pair scores: every pair of development photos, by the
cosine of the global descriptor and optionally a local matcher's raw pair score (each unordered
pair matched once and read both ways; an identity's score: its best photo). Writes
``benchmarks/results/threshold-design-<species>-<score>-both-databases-cpu-<date>.json``.
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
from wildreid.metrics import threshold_curve
from wildreid.openset import pseudo_query_threshold
from wildreid.pipeline import Identifier
from wildreid.pseudo_queries import pseudo_split
from wildreid.stage import take

#: (name, who the pseudo-queries meet, pseudo-splits pooled): ``held-out`` pools 5 as
#: ``fit_threshold`` (the cosine's threshold) does; ``held-out, 1 split`` is what
#: ``LocalReranking.fit`` does (one split, its pairs scored once by the local matchers).
DESIGNS = (("held-out", "held-out", 5), ("held-out, 1 split", "held-out", 1),
           ("whole-database", "whole-database", 5), ("leave-one-out", "leave-one-out", 5))


def best_identities(table: np.ndarray, identities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's best identity and its score (its best photo) in a queries x photos ``table``
    (-inf: a photo the query does not meet), ``identities`` being the photos'."""
    names = np.unique(identities)
    per_identity = np.stack([table[:, identities == name].max(1) for name in names], 1)
    best = per_identity.argmax(1)
    return names[best], per_identity[np.arange(len(table)), best]


def pseudo_queries(design: str, database: np.ndarray, identities: np.ndarray,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """One round of pseudo-queries of ``database`` (rows): the rows, whether each is unknown, and
    which photos each meets (queries x all rows)."""
    split = pseudo_split(identities[database], rng)
    if split is None:
        return None
    count = len(identities)
    in_database = np.zeros(count, bool)
    in_database[database] = True
    queries, unknown = database[split.queries], split.unknown
    if design == "held-out":
        reference = np.zeros(count, bool)
        reference[database[split.reference]] = True
        return queries, unknown, np.broadcast_to(reference, (len(queries), count))
    held = np.zeros(count, bool)
    held[queries] = True
    if design == "whole-database":
        own = identities[None, :] == identities[queries][:, None]
        return queries, unknown, in_database[None, :] & ~(own & held[None, :])
    # leave-one-out: the unknown ones as above, every photo of a known identity with 2 or more.
    unknown_rows = queries[unknown]
    names, counts = np.unique(identities[database], return_counts=True)
    plural = set(names[counts >= 2]) - set(identities[unknown_rows])
    known_rows = database[np.isin(identities[database], list(plural))]
    queries = np.concatenate([unknown_rows, known_rows])
    unknown = np.concatenate([np.ones(len(unknown_rows), bool), np.zeros(len(known_rows), bool)])
    own = identities[None, :] == identities[unknown_rows][:, None]
    allowed_unknown = in_database[None, :] & ~own
    allowed_known = in_database[None, :] & (np.arange(count)[None, :] != known_rows[:, None])
    return queries, unknown, np.concatenate([allowed_unknown, allowed_known])


def pooled_pseudo_queries(design: str, scores: np.ndarray, database: np.ndarray,
                          identities: np.ndarray, rng: np.random.Generator, rounds: int = 5
                          ) -> tuple[list[str], list[str], np.ndarray, np.ndarray]:
    """``rounds`` pseudo-splits of ``database`` pooled: each pseudo-query's true identity, best
    identity (both tagged by round, as ``wildreid.openset.fit_threshold`` tags them), the best
    identity's score and whether the query is pseudo-unknown."""
    true, top, best, unknown = [], [], [], []
    for round_ in range(rounds):
        found = pseudo_queries(design, database, identities, rng)
        if found is None:
            break
        queries, is_unknown, allowed = found
        names, values = best_identities(np.where(allowed, scores[queries], -np.inf), identities)
        true.extend(f"{round_}:{name}" for name in identities[queries])
        top.extend(f"{round_}:{name}" for name in names)
        best.append(values)
        unknown.append(is_unknown)
    return true, top, np.concatenate(best), np.concatenate(unknown)


def fitted_threshold(design: str, scores: np.ndarray, database: np.ndarray,
                     identities: np.ndarray, rng: np.random.Generator, rounds: int = 5) -> float:
    threshold, _ = pseudo_query_threshold(*pooled_pseudo_queries(design, scores, database,
                                                                 identities, rng, rounds))
    return threshold


def simulate(scores: np.ndarray, identities: np.ndarray, repeats: int, seed: int = 0) -> dict:
    """Per design: the simulated protocols' scores at the fitted threshold and in hindsight."""
    rng = np.random.default_rng(seed)
    records = {name: [] for name, _, _ in DESIGNS}
    for _ in range(repeats):
        outer = pseudo_split(identities, rng)
        database, queries = outer.reference, outer.queries
        names, values = best_identities(scores[np.ix_(queries, database)], identities[database])
        curve = threshold_curve(identities[queries], names, values, outer.unknown)
        hindsight = curve.loc[curve["score"].idxmax()]
        for name, design, rounds in DESIGNS:
            threshold = fitted_threshold(design, scores, database, identities,
                                         np.random.default_rng(rng.integers(2**32)), rounds)
            at = threshold_curve(identities[queries], names, values, outer.unknown,
                                 thresholds=np.array([threshold])).iloc[0]
            records[name].append({
                "score": float(at["score"]), "baks": float(at["baks"]), "baus": float(at["baus"]),
                "hindsight": float(hindsight["score"]), "threshold": float(threshold),
                "best_threshold": float(hindsight["threshold"])})
    return summarise(records, DESIGNS[0][0], "held_out")


def summarise(records: dict[str, list[dict]], baseline: str, against: str,
              extra: tuple[str, ...] = ()) -> dict:
    """Per variant, over the simulated protocols (``records``: score, hindsight, BAKS, BAUS,
    fitted and best threshold of each): the means, the gap to the hindsight and that gap against
    the ``baseline`` variant's on the same protocols (paired: ``gap_minus_<against>``), the score
    against the baseline's (paired: ``score_minus_<against>``), and the
    means of the ``extra`` record fields."""
    summary = {}
    reference = np.array([r["hindsight"] - r["score"] for r in records[baseline]])
    baseline_score = np.array([r["score"] for r in records[baseline]])
    mean = lambda found, key: round(float(np.mean([r[key] for r in found])), 4)  # noqa: E731
    for name, found in records.items():
        gap = np.array([r["hindsight"] - r["score"] for r in found])
        paired = gap - reference  # the same simulated protocols: differences are paired
        under = np.array([r["best_threshold"] - r["threshold"] for r in found])
        gained = np.array([r["score"] for r in found]) - baseline_score  # paired as well
        summary[name] = {
            "mean_score": mean(found, "score"), "mean_hindsight": mean(found, "hindsight"),
            "mean_gap": round(float(gap.mean()), 4),
            "gap_se": round(float(gap.std(ddof=1) / np.sqrt(len(gap))), 4),
            f"gap_minus_{against}": round(float(paired.mean()), 4),
            f"gap_minus_{against}_se": round(float(paired.std(ddof=1) / np.sqrt(len(paired))),
                                             4),
            f"score_minus_{against}": round(float(gained.mean()), 4),
            f"score_minus_{against}_se": round(float(gained.std(ddof=1) / np.sqrt(len(gained))),
                                               4),
            "share_gap_over_0.02": round(float(np.mean(gap > 0.02)), 3),
            "median_threshold_under_best": round(float(np.median(under)), 4),
            "mean_abs_gap_of_thresholds": round(float(np.mean(np.abs(under))), 4),
            "mean_baks": mean(found, "baks"), "mean_baus": mean(found, "baus"),
            **{f"mean_{key}": mean(found, key) for key in extra}}
    return summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--species", default="nyala")
    parser.add_argument("--local", default="none", help="sift, aliked-nn ... or none (cosine only)")
    parser.add_argument("--keypoints-on", default="animal", choices=("animal", "image"))
    parser.add_argument("--pair-score", default="confidence_sum", choices=PAIR_SCORES)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--bench", type=Path, default=DEFAULT_BENCH)
    parser.add_argument("--cache-dir", type=Path, default=Path("/tmp/wildreid-study-cache"))
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    parser.add_argument("--tables", type=Path, default=None,
                        help="an .npz to keep the pair tables in, read instead of matching again")
    args = parser.parse_args(argv)
    metadata = development_database(args.bench, args.species)
    identities = metadata["identity"].fillna("").astype(str).to_numpy()
    count = len(metadata)
    print(f"{args.species}: {count} development photos, {len(np.unique(identities))} identities",
          flush=True)
    embeddings = Identifier(device="cpu", cache_dir=args.cache_dir).describe(metadata,
                                                                             "global features")
    tables = {"cosine": embeddings @ embeddings.T}
    seconds = {}
    stored = dict(np.load(args.tables)) if args.tables and args.tables.exists() else {}
    if args.local in stored:
        tables[args.local] = stored[args.local]
    elif args.local != "none":
        start = time.perf_counter()
        regions = (Isolator(Segmenter(), cache_dir=args.cache_dir)(metadata, "regions")
                   if args.keypoints_on == "animal" else None)
        extractor = KeypointExtractor(create_local_features(args.local, device="cpu"),
                                      args.cache_dir)
        keypoints = list(take(extractor(metadata["filepath"].astype(str).tolist(), regions,
                                        f"{args.local} keypoints"), range(count)))
        # Each unordered pair once, read both ways (half the matching; mutual nearest
        # neighbours match the same keypoints either way, only the ratio test is one-sided).
        first, second = np.triu_indices(count, 1)
        found = score_pairs(create_matcher(args.local, device="cpu"), keypoints,
                            np.stack([first, second], 1), ransac=args.pair_score == "inliers",
                            description=f"{args.local}: every pair")
        table = np.full((count, count), -np.inf)
        table[first, second] = table[second, first] = found[args.pair_score]
        tables[args.local] = table
        seconds["local"] = round(time.perf_counter() - start, 1)
        if args.tables:
            np.savez_compressed(args.tables, **tables)
    results = []
    for name, table in tables.items():
        table = np.where(np.eye(count, dtype=bool), -np.inf, table)  # a photo never meets itself
        summary = simulate(table, identities, args.repeats)
        for design, figures in summary.items():
            results.append({"pair_score": name if name == "cosine" else
                            f"{name} {args.pair_score}", "design": design, **figures})
            print(f"  {name:10s} {design:18s} score {figures['mean_score']:.3f} "
                  f"(hindsight {figures['mean_hindsight']:.3f}, gap {figures['mean_gap']:.3f} "
                  f"± {figures['gap_se']:.3f}, against held-out {figures['gap_minus_held_out']:+.3f} "
                  f"± {figures['gap_minus_held_out_se']:.3f}; threshold under the best by "
                  f"{figures['median_threshold_under_best']:.3f}; |difference| "
                  f"{figures['mean_abs_gap_of_thresholds']:.3f})", flush=True)
    label = "cosine" if args.local == "none" else f"{args.local}-{args.pair_score}"
    write_cpu_result(args.out, f"threshold-design-{args.species}-{label}-both-databases", {
        "development_split": DEVELOPMENT_SPLIT, "species": args.species, "local": args.local,
        "keypoints_on": args.keypoints_on, "repeats": args.repeats, "photos": count,
        "identities": len(np.unique(identities)), "seconds": seconds}, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
