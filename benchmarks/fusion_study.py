"""Calibration and fusion variants, offline, on pair scores dumped by a benchmark run.

    python benchmarks/fusion_study.py benchmarks/results/pairs/pairs-B-....csv.gz

Input: ``nyala_lion.py --dump-pairs`` output for protocol B (every query is known): calibration
pairs (database pseudo-queries vs their shortlist) and query pairs, each with the cosine and every
local score. Each variant is fitted on the calibration pairs only and scored by top-1 per species
on the query pairs; shorter shortlists are simulated by keeping a query's best pairs by cosine.
A run with ``--mirror all`` also holds every pair's score with the query mirrored: then the
variants "mirror opposite" (mirrored score used for left/right pairs) and "mirror all" are added.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from common import DEFAULT_BENCH, unused_path
from sklearn.ensemble import HistGradientBoostingClassifier

from wildreid.data import load_dataset
from wildreid.fusion import Calibration
from wildreid.scorers import mirror_views


def top1(pairs: pd.DataFrame, score: np.ndarray) -> dict[str, float]:
    table = pairs[["query", "species", "database_identity", "query_identity"]].copy()
    table["score"] = score + 1e-4 * pairs["cosine"].to_numpy()
    best = table.loc[table.groupby("query")["score"].idxmax()]
    correct = best["database_identity"] == best["query_identity"]
    return {s: round(100 * float(c.mean()), 1) for s, c in correct.groupby(best["species"])}


def calibrated(columns: list[str], per_species: bool = False):
    def run(train: pd.DataFrame, test: pd.DataFrame) -> np.ndarray:
        out = np.zeros(len(test))
        groups = train["species"].unique() if per_species else [None]
        for species in groups:
            fit_rows = train if species is None else train[train["species"] == species]
            rows = (np.ones(len(test), bool) if species is None
                    else (test["species"] == species).to_numpy())
            calibration = Calibration.fit({c: fit_rows[c].to_numpy() for c in columns},
                                          fit_rows["same"].to_numpy())
            out[rows] = calibration.fuse({c: test.loc[rows, c].to_numpy() for c in columns})
        return out
    return run


def boosted(columns: list[str]):
    def run(train: pd.DataFrame, test: pd.DataFrame) -> np.ndarray:
        features = [*columns, "is_lion"]
        model = HistGradientBoostingClassifier(max_iter=200, learning_rate=0.05, random_state=0)
        model.fit(train[features], train["same"])
        return model.predict_proba(test[features])[:, 1]
    return run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("pairs", type=Path)
    parser.add_argument("--out", type=Path, default=None, help="JSON file for the results")
    parser.add_argument("--bench", type=Path, default=DEFAULT_BENCH)
    parser.add_argument("--metadata", default="closedset_metadata.csv",
                        help="the run's metadata, for the orientation of each image")
    args = parser.parse_args()
    pairs = pd.read_csv(args.pairs)
    dataset = load_dataset(args.bench, args.metadata, check_files=False)
    database_side = dataset.database["orientation"].astype(object).to_numpy()
    query_side = dataset.query["orientation"].astype(object).to_numpy()
    calibration_stage = pairs["stage"].str.startswith("calibration").to_numpy()
    image = pairs["database_image"].to_numpy()
    query = pairs["query"].to_numpy()
    query_orientation = np.where(calibration_stage,
                                 database_side[np.where(calibration_stage, query, 0)],
                                 query_side[np.where(calibration_stage, 0, query)])
    pairs["same_side"] = database_side[image] == query_orientation
    pairs["mirror_view"] = mirror_views(query_orientation, database_side[image])
    pairs["same"] = pairs["database_identity"] == pairs["query_identity"]
    pairs["is_lion"] = (pairs["species"] == "lion").astype(int)
    train = pairs[pairs["stage"].str.startswith("calibration")].reset_index(drop=True)
    test = pairs[pairs["stage"].str.startswith("query")].reset_index(drop=True)
    test["cosine_rank"] = test.groupby("query")["cosine"].rank(ascending=False, method="first")
    name = next(c.split(":")[0] for c in pairs.columns if ":" in c)
    conf, inl, m5 = f"{name}:confidence_sum", f"{name}:inliers", f"{name}:matches@0.5"
    variants = {
        "cosine only": lambda tr, te: te["cosine"].to_numpy(),
        f"{conf} only (raw)": lambda tr, te: te[conf].to_numpy(),
        f"{inl} only (raw)": lambda tr, te: te[inl].to_numpy(),
        "isotonic: confidence_sum alone": calibrated([conf]),
        "isotonic mean: cosine + confidence_sum": calibrated(["cosine", conf]),
        "isotonic mean: cosine + inliers": calibrated(["cosine", inl]),
        "isotonic mean: cosine + confidence_sum + inliers": calibrated(["cosine", conf, inl]),
        "isotonic mean per species: cosine + confidence_sum": calibrated(["cosine", conf], True),
        "isotonic mean: cosine + confidence_sum, same orientation only": lambda tr, te: (
            calibrated(["cosine", conf])(tr, te) - 2.0 * (~te["same_side"]).to_numpy()),
        "confidence_sum (raw), same orientation only": lambda tr, te: (
            te[conf].to_numpy() - 1e6 * (~te["same_side"]).to_numpy()),
        "gradient boosting: cosine, confidence_sum, matches@0.5, inliers, species": boosted(
            ["cosine", conf, m5, inl]),
    }
    mirrored = f"{name}:mirrored:confidence_sum"
    if mirrored in pairs.columns:
        for data in (train, test):
            data["mirror all"] = np.fmax(data[conf], data[mirrored])
            data["mirror opposite"] = np.where(data["mirror_view"], data["mirror all"], data[conf])
        for mode in ("mirror opposite", "mirror all"):
            variants[f"{mode}: confidence_sum (raw)"] = (
                lambda tr, te, mode=mode: te[mode].to_numpy())
            variants[f"{mode}: isotonic mean: cosine + confidence_sum"] = calibrated(
                ["cosine", mode])
    shortlist = int(test["cosine_rank"].max())
    results = {}
    for label, variant in variants.items():
        score = variant(train, test)
        for size in sorted({50, 100, shortlist}):
            keep = (test["cosine_rank"] <= size).to_numpy()
            results[f"{label} | shortlist {size}"] = top1(test[keep], score[keep])
    width = max(len(k) for k in results)
    for key, value in results.items():
        print(f"{key:<{width}}  " + "  ".join(f"{s} {v:5.1f} %" for s, v in value.items()))
    recall = test[test["same"]].groupby("species")["query"].nunique() / test.groupby(
        "species")["query"].nunique()
    print("queries with a true match in the shortlist:",
          {s: round(100 * float(v), 1) for s, v in recall.items()})
    if args.out:
        unused_path(args.out).write_text(json.dumps({"input": str(args.pairs), "top1": results,
                                        "shortlist_recall": recall.to_dict()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
