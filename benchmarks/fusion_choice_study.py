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

import itertools
import sys

import numpy as np
import pandas as pd
from fusion_threshold_study import scored_at, simulated_protocols, study_inputs, write_table_study
from threshold_design_study import summarise

from wildreid.openset import pseudo_query_threshold
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
    for found in simulated_protocols(tables, identities, repeats, seed):
        # Pairs as query row (within the pseudo-queries, then within the simulated queries) and
        # photo, for the pipeline's tie-break.
        rows, columns = np.meshgrid(np.arange(len(found.pseudo)), found.reference,
                                    indexing="ij")
        query_rows, query_columns = np.meshgrid(np.arange(len(found.queries)), found.database,
                                                indexing="ij")
        known, truth = ~found.inner.unknown, identities[found.pseudo]
        hits, result = {}, {}
        for subset in sets:
            fused = np.mean([found.out_of_fold[name] for name in subset], 0)
            evidence = found.pairs[local] if local in subset else np.zeros_like(fused)
            top, score = top_identities(fused, evidence, found.pairs["cosine"], rows.ravel(),
                                        identities[columns].ravel(), len(found.pseudo))
            hits[subset] = float(np.mean(top[known] == truth[known]))
            threshold, _ = pseudo_query_threshold(truth, top, score, found.inner.unknown)
            applied = found.calibration.transform({name: found.query_pairs[name]
                                                   for name in subset})
            fused = np.mean(list(applied.values()), 0)
            evidence = found.query_pairs[local] if local in subset else np.zeros_like(fused)
            top, score = top_identities(fused, evidence, found.query_pairs["cosine"],
                                        query_rows.ravel(), identities[query_columns].ravel(),
                                        len(found.queries))
            result[subset] = scored_at(identities[found.queries], top, score,
                                       found.outer.unknown, threshold)
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
    args, identities, tables, local = study_inputs(__doc__.split("\n\n")[0], argv)
    summary, picks = simulate(tables, local, identities, args.repeats)
    for name, figures in summary.items():
        print(f"  {name:22s} score {figures['mean_score']:.3f} (hindsight "
              f"{figures['mean_hindsight']:.3f}), against the rule before "
              f"{figures['score_minus_larger_on_a_tie']:+.4f} ± "
              f"{figures['score_minus_larger_on_a_tie_se']:.4f}; known top-1 "
              f"{figures['mean_known_top1']:.3f}; {picks.get(name, '')}", flush=True)
    write_table_study(args, "fusion-choice", local, len(identities),
                      [{"variant": name, **figures, "picked": picks.get(name)}
                       for name, figures in summary.items()])
    return 0


if __name__ == "__main__":
    sys.exit(main())
