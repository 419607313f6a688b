"""How far from the best threshold in hindsight can a threshold fitted on one database's
pseudo-queries land by chance, and does bagging it help? A study on development photos (never a
benchmark query), on the pair tables ``threshold_design_study.py --tables`` saved.

    python benchmarks/threshold_spread_study.py --tables /tmp/nyala-aliked-nn-all-pairs.npz
        --species nyala [--repeats 100]

Nyala protocol A's fitted threshold landed 0.078 under the best in hindsight. On simulated open-set
protocols cut from the development photos (``fusion_threshold_study.simulated_protocols``: one
pseudo-split of each simulated database, as ``LocalReranking.fit`` makes), this gives the spread
of that gap (quantiles over the protocols, the hindsight's optimism included), for the local
score calibrated alone and fused with the cosine, and compares the threshold as fitted before (the
middle of the best plateau of sqrt(BAKS x BAUS) over the pseudo-queries) with bagged ones: the
median and the mean (``wildreid.openset.bagged_threshold``, adopted) of the thresholds fitted on
50 resamples of the pseudo-queries' identities (``resampled_thresholds``: with replacement; no
pair scored again). Writes
``benchmarks/results/threshold-spread-<species>-<local>-both-databases-cpu-<date>.json``.
"""

from __future__ import annotations

import sys

import numpy as np
from fusion_threshold_study import scored_at, simulated_protocols, study_inputs, write_table_study
from threshold_design_study import best_identities, summarise

from wildreid.openset import bagged_threshold, pseudo_query_threshold, resampled_thresholds

FITS = ("fitted (before)", "bagged, median", "bagged, mean")


def simulate(tables: dict[str, np.ndarray], local: str, identities: np.ndarray, repeats: int,
             seed: int = 0) -> tuple[dict, dict]:
    fusions = {"local alone": (local,), "cosine + local": ("cosine", local)}
    records = {f"{fusion}, {fit}": [] for fusion in fusions for fit in FITS}
    for found in simulated_protocols(tables, identities, repeats, seed):
        for fusion, names in fusions.items():
            fitted = np.mean([found.out_of_fold[name] for name in names], 0).reshape(
                len(found.pseudo), -1)
            top, score = best_identities(fitted, identities[found.reference])
            truth, unknown = identities[found.pseudo], found.inner.unknown
            threshold, _ = pseudo_query_threshold(truth, top, score, unknown)
            resampled = resampled_thresholds(truth, top, score, unknown)
            applied = found.calibration.transform({name: found.query_pairs[name]
                                                   for name in names})
            fused = np.mean(list(applied.values()), 0).reshape(len(found.queries), -1)
            query_top, query_score = best_identities(fused, identities[found.database])
            fits = (threshold, float(np.median(resampled[np.isfinite(resampled)])),
                    bagged_threshold(truth, top, score, unknown))  # the pipeline's, as it runs
            for fit, value in zip(FITS, fits):
                records[f"{fusion}, {fit}"].append(scored_at(
                    identities[found.queries], query_top, query_score, found.outer.unknown,
                    value))
    summary = {}
    for fusion in fusions:  # each bagged fit against the plain one, on the same fused score
        part = {fit: records[f"{fusion}, {fit}"] for fit in FITS}
        for fit, figures in summarise(part, FITS[0], "fitted", extra=("known_top1",)).items():
            summary[f"{fusion}, {fit}"] = figures
    spread = {}
    for name, found in records.items():
        gap = np.array([r["hindsight"] - r["score"] for r in found])
        spread[name] = {f"gap_q{int(q * 100)}": round(float(np.quantile(gap, q)), 4)
                        for q in (0.5, 0.75, 0.9, 0.95)}
        spread[name].update(gap_max=round(float(gap.max()), 4),
                            share_gap_over_0_078=round(float(np.mean(gap > 0.078)), 3))
    return summary, spread


def main(argv=None) -> int:
    args, identities, tables, local = study_inputs(__doc__.split("\n\n")[0], argv,
                                                   repeats=100)
    summary, spread = simulate(tables, local, identities, args.repeats)
    for name, figures in summary.items():
        quantiles = spread[name]
        print(f"  {name:32s} score {figures['mean_score']:.3f} (hindsight "
              f"{figures['mean_hindsight']:.3f}), against the fitted threshold "
              f"{figures['score_minus_fitted']:+.4f} ± {figures['score_minus_fitted_se']:.4f};"
              f" gap median {quantiles['gap_q50']:.3f}, 90 % {quantiles['gap_q90']:.3f}, "
              f"95 % {quantiles['gap_q95']:.3f}, over 0.078 in "
              f"{quantiles['share_gap_over_0_078']:.0%}", flush=True)
    write_table_study(args, "threshold-spread", local, len(identities),
                      [{"variant": name, **figures, **spread[name]}
                       for name, figures in summary.items()])
    return 0


if __name__ == "__main__":
    sys.exit(main())
