"""An identity's score from its images' pair scores, on a development split of the database.

Reads the score tables that ``orientation_dev_study.py --tables FILE`` saved (every
development query against every gallery image, by pair score) and compares, for each pair
score, the identity's best image (``max``) with the sum of its best two (``top2``): the top-1 of
the development queries (never the benchmark's queries). This is what ``local_aggregation="auto"``
chooses per species inside ``fit``, here over the whole gallery rather than calibration pairs.

    python benchmarks/orientation_dev_study.py --species nyala --local aliked-nn \\
        --cache-dir /tmp/nyala-cache --tables /tmp/nyala-tables.npz
    python benchmarks/aggregation_dev_study.py --tables /tmp/nyala-tables.npz --species nyala
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from common import write_cpu_result

#: Images summed into an identity's score, by aggregation (as in ``wildreid.rerank``).
AGGREGATIONS = {"max": 1, "top2": 2}


def top1(table: np.ndarray, names: np.ndarray, truth: np.ndarray, summed: int) -> float:
    """Share of queries (rows of ``table``, a score per gallery image of identity ``names``)
    whose identity of highest summed best-``summed`` scores is ``truth``."""
    identities = np.unique(names)
    scores = np.empty((len(table), len(identities)), np.float64)
    for column, name in enumerate(identities):
        best = -np.sort(-table[:, names == name], axis=1)[:, :summed]
        scores[:, column] = best.sum(1)
    return float(np.mean(identities[scores.argmax(1)] == truth))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tables", type=Path, required=True,
                        help="score tables saved by orientation_dev_study.py --tables")
    parser.add_argument("--species", required=True, help="named in the result file")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    tables = np.load(args.tables, allow_pickle=True)
    identities = tables["identities"]
    truth, names = identities[tables["queries"]], identities[tables["gallery"]]
    skipped = {"queries", "gallery", "identities", "orientation", "counts"}
    trials = []
    for score in (name for name in tables.files if name not in skipped):
        for aggregation, summed in AGGREGATIONS.items():
            trial = {"pair_score": score, "aggregation": aggregation,
                     "top1": top1(tables[score], names, truth, summed)}
            trials.append(trial)
            print(f"  {score:16s} {aggregation:5s} top-1 {100 * trial['top1']:.1f} %")
    write_cpu_result(args.out, f"aggregation-dev-{args.species}", {
        "species": args.species, "tables": args.tables.name,
        "development": {"queries": len(truth), "gallery": len(names)}}, trials)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
