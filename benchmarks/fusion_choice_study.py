"""How should ``fusion="auto"`` pick the scores it fuses? A study on development photos (never a
benchmark query), on the pair tables ``threshold_design_study.py --tables`` saved.

    python benchmarks/fusion_choice_study.py --tables /tmp/nyala-aliked-nn-all-pairs.npz
        --species nyala [--repeats 50]

``LocalReranking.fit`` fuses, per species, the set of calibrated scores whose out-of-fold fused
scores name most pseudo-known queries of the database right, the larger set on a tie. Those
are a few hundred queries at most, so sets a query or two apart are chosen by chance: on nyala
protocol A (the cascade) the cosine joined the fusion by one pseudo-query of 123. This replays
that choice on simulated open-set protocols cut from the development photos
(``common.development_database``) as ``fusion_threshold_study`` cuts them (one pseudo-split of
each simulated database, isotonic calibration, cross-fitted for the choice and the threshold,
ties of fused scores broken by the raw local score, then the cosine, as the pipeline breaks
them), and compares rules of choice:

- ``larger on a tie``: the rule before this study;
- ``smaller on a tie``: the same, the smaller set on a tie;
- ``one standard error``: the fewest scores whose top-1 is within one binomial standard error of
  the best (the "one-standard-error rule" of model selection), the best top-1 among those;
- each of them among the sets that hold a local score (``..., a local score in``: never the
  cosine alone once local matching was asked for); ``one standard error, a local score in`` is
  the rule this study chose, run as the pipeline runs it (``wildreid.rerank.fused_set_chosen``);

beside every set fused always. Each is scored by the simulated queries' open-set score at the
fitted threshold. Writes ``benchmarks/results/fusion-choice-<species>-<local>-both-databases-cpu-
<date>.json``.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from common import DEFAULT_BENCH, DEVELOPMENT_SPLIT, development_database, write_cpu_result
from fusion_threshold_study import read_tables
from threshold_design_study import summarise

from wildreid.fusion import Calibration, cross_fitted_calibration
from wildreid.metrics import threshold_curve
from wildreid.openset import pseudo_query_threshold, pseudo_split
from wildreid.rerank import _top_identities, fused_set_chosen

BASE_RULES = ("larger on a tie", "smaller on a tie", "one standard error")
#: Each rule among every set, and among the sets holding a local score (never the cosine alone).
RULES = (*BASE_RULES, *(f"{rule}, a local score in" for rule in BASE_RULES))


def chosen(rule: str, sets: list[tuple[str, ...]], hits: dict, known: int) -> tuple[str, ...]:
    """The set ``rule`` picks from each set's pseudo-known top-1 (``hits``, over ``known``
    queries); ``sets`` in the pipeline's order (larger sets first)."""
    if rule == "one standard error, a local score in":  # the pipeline's rule, as it runs
        return fused_set_chosen(hits, known)
    if rule.endswith(", a local score in"):
        sets = [subset for subset in sets if subset != ("cosine",)]
        hits = {subset: hits[subset] for subset in sets}
        rule = rule.removesuffix(", a local score in")
    if rule == "larger on a tie":
        return max(sets, key=lambda subset: hits[subset])  # the first of the best
    if rule == "smaller on a tie":
        return max(sets[::-1], key=lambda subset: hits[subset])
    best = max(hits.values())
    error = np.sqrt(best * (1 - best) / known)
    near = [subset for subset in sets if hits[subset] >= best - error - 1e-12]
    return min(near, key=lambda subset: (len(subset), -hits[subset]))


def top_identities(fused, local, cosine, rows, identities, queries):
    """The pipeline's best identity per query and its fused score (ties: raw local, cosine)."""
    table = pd.DataFrame({"query": rows, "identity": identities, "score": fused,
                          "local": local, "cosine": cosine})
    found = _top_identities(table, queries, 1)
    return found["identity"][:, 0], found["score"][:, 0]


def simulate(tables: dict[str, np.ndarray], local: str, identities: np.ndarray, repeats: int,
             seed: int = 0) -> tuple[dict, dict]:
    names = ("cosine", local)
    sets = [subset for size in range(len(names), 0, -1)
            for subset in itertools.combinations(names, size)]
    fixed = {" + ".join(subset) + " always": subset for subset in sets}
    records = {name: [] for name in (*RULES, *fixed)}
    picks = {rule: [] for rule in RULES}
    rng = np.random.default_rng(seed)
    for _ in range(repeats):
        outer = pseudo_split(identities, rng)
        database, queries = outer.reference, outer.queries
        inner = pseudo_split(identities[database], np.random.default_rng(rng.integers(2**32)))
        pseudo, reference = database[inner.queries], database[inner.reference]
        rows, columns = np.meshgrid(np.arange(len(pseudo)), reference, indexing="ij")
        pairs = {name: table[pseudo[rows], columns].ravel() for name, table in tables.items()}
        same = (identities[pseudo[rows]] == identities[columns]).ravel()
        out_of_fold = cross_fitted_calibration(pairs, same, identities[pseudo[rows]].ravel())
        calibration = Calibration.fit(pairs, same)
        known, truth = ~inner.unknown, identities[pseudo]
        outer_rows, outer_columns = np.meshgrid(np.arange(len(queries)), database, indexing="ij")
        outer_pairs = {name: table[queries[outer_rows], outer_columns].ravel()
                       for name, table in tables.items()}
        hits, result = {}, {}
        for subset in sets:
            fused = np.mean([out_of_fold[name] for name in subset], 0)
            evidence = pairs[local] if local in subset else np.zeros_like(fused)
            top, score = top_identities(fused, evidence, pairs["cosine"], rows.ravel(),
                                        identities[columns].ravel(), len(pseudo))
            hits[subset] = float(np.mean(top[known] == truth[known]))
            threshold, _ = pseudo_query_threshold(truth, top, score, inner.unknown)
            applied = calibration.transform({name: outer_pairs[name] for name in subset})
            fused = np.mean(list(applied.values()), 0)
            evidence = outer_pairs[local] if local in subset else np.zeros_like(fused)
            top, score = top_identities(fused, evidence, outer_pairs["cosine"],
                                        outer_rows.ravel(), identities[outer_columns].ravel(),
                                        len(queries))
            curve = threshold_curve(identities[queries], top, score, outer.unknown)
            hindsight = curve.loc[curve["score"].idxmax()]
            at = threshold_curve(identities[queries], top, score, outer.unknown,
                                 thresholds=np.array([threshold])).iloc[0]
            outer_known = ~outer.unknown
            result[subset] = {
                "score": float(at["score"]), "hindsight": float(hindsight["score"]),
                "baks": float(at["baks"]), "baus": float(at["baus"]),
                "threshold": float(threshold), "best_threshold": float(hindsight["threshold"]),
                "known_top1": float(np.mean(top[outer_known]
                                            == identities[queries][outer_known]))}
        for name, subset in fixed.items():
            records[name].append(result[subset])
        for rule in RULES:
            subset = chosen(rule, sets, hits, int(known.sum()))
            picks[rule].append(" + ".join(subset))
            records[rule].append(result[subset])
    summary = summarise(records, RULES[0], "larger_on_a_tie", extra=("known_top1",))
    return summary, {rule: pd.Series(found).value_counts().to_dict()
                     for rule, found in picks.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tables", type=Path, required=True)
    parser.add_argument("--species", default="nyala")
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--bench", type=Path, default=DEFAULT_BENCH)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    metadata = development_database(args.bench, args.species)
    identities = metadata["identity"].fillna("").astype(str).to_numpy()
    tables, local = read_tables(args.tables, args.species, len(identities))
    print(f"{args.species}: {len(identities)} development photos, local score {local}",
          flush=True)
    summary, picks = simulate(tables, local, identities, args.repeats)
    for name, figures in summary.items():
        print(f"  {name:22s} score {figures['mean_score']:.3f} (hindsight "
              f"{figures['mean_hindsight']:.3f}), against the rule before "
              f"{figures['score_minus_larger_on_a_tie']:+.4f} ± "
              f"{figures['score_minus_larger_on_a_tie_se']:.4f}; known top-1 "
              f"{figures['mean_known_top1']:.3f}; {picks.get(name, '')}", flush=True)
    write_cpu_result(args.out, f"fusion-choice-{args.species}-{local}-both-databases", {
        "development_split": DEVELOPMENT_SPLIT, "species": args.species, "local": local,
        "repeats": args.repeats, "photos": len(identities), "tables": args.tables.name},
        [{"variant": name, **figures, "picked": picks.get(name)}
         for name, figures in summary.items()])
    return 0


if __name__ == "__main__":
    sys.exit(main())
