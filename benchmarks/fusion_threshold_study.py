"""Does fusing the global cosine with a local score move the fitted threshold away from the best
one? A study on development photos (never a benchmark query), on the pair tables
``threshold_design_study.py --tables`` saved.

    python benchmarks/fusion_threshold_study.py --tables /tmp/nyala-aliked-nn-all-pairs.npz
        --species nyala [--repeats 50]

Every nyala protocol A run with the cosine in the fused score had its fitted threshold further
from the best one than the runs without it (BENCHMARKS.md "Pseudo-queries and the threshold").
This replays ``LocalReranking.fit`` on simulated open-set protocols cut from the development
photos (``common.development_database``), as ``threshold_design_study`` cuts them: on each
simulated database one pseudo-split, its pseudo-queries against the photos left as calibration
pairs, each score calibrated by isotonic regression (cross-fitted by pseudo-query identity for
the threshold, fitted on all the pairs for the queries), the fused score the mean of the
calibrated ones, an identity's score its best photo; then the simulated queries' score at the
fitted threshold and at the best one in hindsight, for the local score alone and fused with the
cosine. Writes ``benchmarks/results/fusion-threshold-<species>-<local>-both-databases-cpu-<date>.json``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import numpy as np
from common import DEFAULT_BENCH, DEVELOPMENT_SPLIT, development_database, write_cpu_result
from threshold_design_study import best_identities, summarise

from wildreid.fusion import Calibration, cross_fitted_calibration
from wildreid.metrics import threshold_curve
from wildreid.openset import pseudo_query_threshold
from wildreid.pseudo_queries import PseudoSplit, pseudo_split


class Protocol(NamedTuple):
    """One simulated open-set protocol and what ``LocalReranking.fit`` learns on its database:
    the outer split (``outer``: the simulated queries against the simulated ``database`` rows),
    one pseudo-split of the database (``inner``; its pseudo-queries' rows ``pseudo`` against the
    ``reference`` rows), the calibration pairs (``pairs``: each table's values over ``pseudo`` x
    ``reference``, flattened; ``same``), their out-of-fold and in-sample calibrations, and the
    simulated queries' pairs (``query_pairs``: over ``queries`` x ``database``, flattened)."""
    outer: PseudoSplit
    inner: PseudoSplit
    database: np.ndarray
    queries: np.ndarray
    pseudo: np.ndarray
    reference: np.ndarray
    pairs: dict[str, np.ndarray]
    same: np.ndarray
    out_of_fold: dict[str, np.ndarray]
    calibration: Calibration
    query_pairs: dict[str, np.ndarray]


def simulated_protocols(tables: dict[str, np.ndarray], identities: np.ndarray, repeats: int,
                        seed: int = 0) -> Iterator[Protocol]:
    """``repeats`` simulated protocols cut from the photos as the pseudo-splits cut them."""
    rng = np.random.default_rng(seed)
    for _ in range(repeats):
        outer = pseudo_split(identities, rng)
        database, queries = outer.reference, outer.queries
        inner = pseudo_split(identities[database], np.random.default_rng(rng.integers(2**32)))
        pseudo, reference = database[inner.queries], database[inner.reference]
        rows, columns = np.meshgrid(pseudo, reference, indexing="ij")
        pairs = {name: table[rows, columns].ravel() for name, table in tables.items()}
        same = (identities[rows] == identities[columns]).ravel()
        out_of_fold = cross_fitted_calibration(pairs, same, identities[rows].ravel())
        outer_rows, outer_columns = np.meshgrid(queries, database, indexing="ij")
        yield Protocol(outer, inner, database, queries, pseudo, reference, pairs, same,
                       out_of_fold, Calibration.fit(pairs, same),
                       {name: table[outer_rows, outer_columns].ravel()
                        for name, table in tables.items()})


def scored_at(truth: np.ndarray, top: np.ndarray, score: np.ndarray, unknown: np.ndarray,
              threshold: float) -> dict:
    """The simulated queries' figures (their ``truth``, best identity ``top`` and its ``score``,
    whether ``unknown``) at the fitted ``threshold`` and at the best one in hindsight."""
    curve = threshold_curve(truth, top, score, unknown)
    hindsight = curve.loc[curve["score"].idxmax()]
    at = threshold_curve(truth, top, score, unknown, thresholds=np.array([threshold])).iloc[0]
    return {"score": float(at["score"]), "hindsight": float(hindsight["score"]),
            "baks": float(at["baks"]), "baus": float(at["baus"]),
            "threshold": float(threshold), "best_threshold": float(hindsight["threshold"]),
            "known_top1": float(np.mean(top[~unknown] == truth[~unknown]))}


def simulate(tables: dict[str, np.ndarray], local: str, identities: np.ndarray, repeats: int,
             seed: int = 0) -> dict:
    fusions = {"local alone": (local,), "cosine + local": ("cosine", local)}
    records = {name: [] for name in fusions}
    for found in simulated_protocols(tables, identities, repeats, seed):
        shape = (len(found.pseudo), len(found.reference))
        for fusion, names in fusions.items():
            fitted = np.mean([found.out_of_fold[name] for name in names], 0).reshape(shape)
            top, score = best_identities(fitted, identities[found.reference])
            threshold, _ = pseudo_query_threshold(identities[found.pseudo], top, score,
                                                  found.inner.unknown)
            applied = found.calibration.transform({name: found.query_pairs[name]
                                                   for name in names})
            fused = np.mean(list(applied.values()), 0).reshape(len(found.queries), -1)
            top, score = best_identities(fused, identities[found.database])
            records[fusion].append(scored_at(identities[found.queries], top, score,
                                             found.outer.unknown, threshold))
    return summarise(records, "local alone", "local_alone", extra=("known_top1",))


def read_tables(path: Path, species: str, count: int) -> tuple[dict[str, np.ndarray], str]:
    """The pair tables ``threshold_design_study.py --local L --tables`` saved (the cosine's and
    one local score's, over the ``count`` development photos of ``species``), and L."""
    tables = dict(np.load(path))
    locals_ = [name for name in tables if name != "cosine"]
    if "cosine" not in tables or len(locals_) != 1:
        raise SystemExit(f"{path}: holds {sorted(tables)}; give the tables "
                         "threshold_design_study.py --local L --tables saved (cosine and L)")
    local = locals_[0]
    if tables[local].shape != (count, count):
        raise SystemExit(f"{path}: {tables[local].shape} table, but the development split "
                         f"of {species} has {count} photos; is it that species' table?")
    return tables, local


def study_inputs(description: str, argv=None, repeats: int = 50
                 ) -> tuple[argparse.Namespace, np.ndarray, dict[str, np.ndarray], str]:
    """The command line of a study on saved pair tables (``--tables``, ``--species``,
    ``--repeats``, ``--bench``, ``--out``), the development photos' identities, the tables and
    their local score's name."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--tables", type=Path, required=True)
    parser.add_argument("--species", default="nyala")
    parser.add_argument("--repeats", type=int, default=repeats)
    parser.add_argument("--bench", type=Path, default=DEFAULT_BENCH)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    metadata = development_database(args.bench, args.species)
    identities = metadata["identity"].fillna("").astype(str).to_numpy()
    tables, local = read_tables(args.tables, args.species, len(identities))
    print(f"{args.species}: {len(identities)} development photos, local score {local}",
          flush=True)
    return args, identities, tables, local


def write_table_study(args: argparse.Namespace, kind: str, local: str, photos: int,
                      results: list[dict]) -> Path:
    """``<out>/<kind>-<species>-<local>-both-databases-cpu-<date>.json``: a study on saved pair
    tables (``study_inputs``' command line) with its ``results``."""
    return write_cpu_result(args.out, f"{kind}-{args.species}-{local}-both-databases", {
        "development_split": DEVELOPMENT_SPLIT, "species": args.species, "local": local,
        "repeats": args.repeats, "photos": photos, "tables": args.tables.name}, results)


def main(argv=None) -> int:
    args, identities, tables, local = study_inputs(__doc__.split("\n\n")[0], argv)
    count = len(identities)
    summary = simulate(tables, local, identities, args.repeats)
    for fusion, figures in summary.items():
        print(f"  {fusion:15s} score {figures['mean_score']:.3f} (hindsight "
              f"{figures['mean_hindsight']:.3f}, gap {figures['mean_gap']:.3f} ± "
              f"{figures['gap_se']:.3f}, against the local score alone "
              f"{figures['gap_minus_local_alone']:+.3f} ± {figures['gap_minus_local_alone_se']:.3f};"
              f" BAKS {figures['mean_baks']:.3f}, BAUS {figures['mean_baus']:.3f})", flush=True)
    write_table_study(args, "fusion-threshold", local, count,
                      [{"fusion": fusion, **figures} for fusion, figures in summary.items()])
    return 0


if __name__ == "__main__":
    sys.exit(main())
