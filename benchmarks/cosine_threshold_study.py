"""Should the cosine-only threshold be bagged too? A study on development photos (never a
benchmark query), on the cosine table ``threshold_design_study.py --tables`` saved.

    python benchmarks/cosine_threshold_study.py --tables /tmp/nyala-aliked-nn-all-pairs.npz
        --species nyala [--repeats 100]

Local re-ranking's ``new_individual`` threshold is the mean of the thresholds fitted on 50
resamples of its pseudo-queries' identities (``wildreid.openset.bagged_threshold``; chosen in
``threshold_spread_study.py``). The fast preset's threshold (``wildreid.openset.fit_threshold``:
the global descriptor's cosine, 5 pseudo-splits pooled, an identity's score its best photo) is
fitted once on the pooled pseudo-queries. On simulated open-set protocols cut from the
development photos as ``threshold_design_study`` cuts them, this compares that plain fit with
the same pooled pseudo-queries bagged: the score of the simulated queries at each threshold and
at the best one in hindsight, paired over the same protocols. Only the tables' ``cosine`` is
read. Writes ``benchmarks/results/cosine-threshold-<species>-cosine-both-databases-cpu-<date>.json``.
"""

from __future__ import annotations

import sys

import numpy as np
from fusion_threshold_study import scored_at, study_inputs, write_table_study
from threshold_design_study import best_identities, pooled_pseudo_queries, summarise

from wildreid.openset import bagged_threshold, pseudo_query_threshold
from wildreid.pseudo_queries import pseudo_split

FITS = ("fitted (today)", "bagged")


def simulate(cosine: np.ndarray, identities: np.ndarray, repeats: int, seed: int = 0) -> dict:
    """Per fit: the simulated queries' figures at its threshold and in hindsight, summarised."""
    cosine = np.where(np.eye(len(cosine), dtype=bool), -np.inf, cosine)  # never itself
    rng = np.random.default_rng(seed)
    records = {fit: [] for fit in FITS}
    for _ in range(repeats):
        outer = pseudo_split(identities, rng)
        database, queries = outer.reference, outer.queries
        top, score = best_identities(cosine[np.ix_(queries, database)], identities[database])
        pooled = pooled_pseudo_queries("held-out", cosine, database, identities,
                                       np.random.default_rng(rng.integers(2**32)))
        thresholds = (pseudo_query_threshold(*pooled)[0], bagged_threshold(*pooled))
        for fit, threshold in zip(FITS, thresholds):
            records[fit].append(scored_at(identities[queries], top, score, outer.unknown,
                                          threshold))
    return summarise(records, FITS[0], "fitted", extra=("known_top1",))


def main(argv=None) -> int:
    args, identities, tables, _ = study_inputs(__doc__.split("\n\n")[0], argv, repeats=100)
    summary = simulate(tables["cosine"], identities, args.repeats)
    results = []
    for fit, figures in summary.items():
        print(f"  {fit:15s} score {figures['mean_score']:.4f} (hindsight "
              f"{figures['mean_hindsight']:.4f}, gap {figures['mean_gap']:.4f} ± "
              f"{figures['gap_se']:.4f}), against today's fit {figures['score_minus_fitted']:+.4f}"
              f" ± {figures['score_minus_fitted_se']:.4f}; BAKS {figures['mean_baks']:.3f}, "
              f"BAUS {figures['mean_baus']:.3f}", flush=True)
        results.append({"fit": fit, **figures})
    write_table_study(args, "cosine-threshold", "cosine", len(identities), results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
