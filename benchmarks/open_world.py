"""The open world on ../shared/bench/nyala-lion: how new individuals are grouped, and how well the
species router names the species of queries whose species column was removed.

    python benchmarks/open_world.py --device cpu [--local sift --shortlist all --long-side 256
        --species lion] [--cache-dir DIR] [--tag NAME]

Grouping (protocol A, ``Identifier(cluster_new=True)``, cut fitted on the database's
pseudo-unknowns): pairwise precision/recall/F1 and adjusted Rand index over the unknown queries,
(1) end to end, as ``evaluate`` scores a ``--cluster-new`` submission (unknown queries named a
known individual count as wrongly placed), and (2) the clustering alone: every unknown query
clustered with the fitted cut (which queries are unknown is read from the answers only here, to
isolate the clustering; nothing is fitted on them). Baselines: every query alone (ARI 0), one
group per species (ARI 0).

Router (protocols A and B, species of every query blanked): share routed to their true species,
and the protocol's score next to the run with the species given.

Splits: the benchmark's labelled photos split again by ``split_labelled`` (closed, open,
disjoint; seed 0), identified and scored.

Writes ``benchmarks/results/open-world-<model>[-<local>][-<tag>]-<device>-<date>.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from common import DEFAULT_BENCH, unused_path
from nyala_lion import machine

from wildreid.data import NEW_INDIVIDUAL, Dataset, load_dataset
from wildreid.features import resolve_device
from wildreid.grouping import grouping_scores
from wildreid.metrics import evaluate
from wildreid.pipeline import Identifier


def identifier(args, cache_dir, cluster_new=False, closed=False) -> Identifier:
    return Identifier(args.model, threshold=None if closed else "auto", device=args.device,
                      cache_dir=cache_dir, local=[n for n in args.local.split(",") if n],
                      shortlist=args.shortlist, long_side=args.long_side,
                      keypoints_on=args.keypoints_on, cluster_new=cluster_new)


def load(args, metadata: str) -> Dataset:
    dataset = load_dataset(args.bench, metadata)
    if args.species:
        keep = dataset.metadata["species"].isin(args.species.split(","))
        dataset = Dataset(dataset.metadata[keep].reset_index(drop=True), dataset.source)
    return dataset


def grouping(args, cache_dir) -> dict:
    dataset = load(args, "metadata.csv")
    answers = pd.read_csv(args.bench / "solution.csv", dtype=str)
    answers = answers[answers["image_id"].isin(dataset.query["image_id"])]
    start = time.perf_counter()
    model = identifier(args, cache_dir, cluster_new=True).fit(dataset.database)
    fitted = time.perf_counter() - start
    submission = model.predict(dataset.query)
    wall = time.perf_counter() - start
    scores = evaluate(submission, answers, dataset.metadata.astype(object))
    truth = dataset.query["image_id"].map(answers.set_index("image_id")["identity"])
    unknown = ~truth.isin(set(dataset.database["identity"]))
    per_species = {}
    for species in sorted(dataset.query["species"].dropna().unique()):
        rows = np.flatnonzero(unknown.to_numpy() & (dataset.query["species"] == species).to_numpy())
        queries = dataset.query.iloc[rows]
        labels = model.grouping_.predict(model.similarity(queries), species)
        names = truth.iloc[rows].to_numpy()
        asked = submission.iloc[rows]["identity"].to_numpy()
        alone = [f"{a}\0{i}" if a == NEW_INDIVIDUAL else a for a, i in zip(asked, rows)]
        per_species[species] = {
            "unknown_queries": len(rows), "unknown_individuals": len(set(names)),
            "cut": model.grouping_.cut_for(species),
            "pseudo_unknown_ari": model.grouping_.quality.get(species),
            "clustering_alone": {**grouping_scores(names, labels),
                                 "groups": len(set(labels))},
            "end_to_end": grouping_scores(names, alone),
            "every_query_alone": grouping_scores(names, np.arange(len(rows))),
            "one_group": grouping_scores(names, np.zeros(len(rows))),
        }
    return {"score": scores["score"], "new_individuals": scores.get("new_individuals"),
            "species": per_species, "fit_s": round(fitted, 1), "wall_s": round(wall, 1)}


def routing(args, cache_dir, protocol: str) -> dict:
    metadata, solution = (("metadata.csv", "solution.csv") if protocol == "A"
                          else ("closedset_metadata.csv", "closedset_solution.csv"))
    dataset = load(args, metadata)
    answers = pd.read_csv(args.bench / solution, dtype=str)
    answers = answers[answers["image_id"].isin(dataset.query["image_id"])]
    model = identifier(args, cache_dir, closed=protocol == "B").fit(dataset.database)
    result = {}
    for name, queries in (("species given", dataset.query),
                          ("species removed", dataset.query.assign(species=pd.NA))):
        start = time.perf_counter()
        candidates = model.predict_candidates(queries, k=5)
        submission = model.decide(candidates)
        scores = evaluate(submission, answers, dataset.metadata.astype(object), candidates)
        best = candidates[candidates["rank"] == 1].set_index("image_id")
        true = dataset.query.set_index("image_id")["species"]
        entry = {"score" if protocol == "A" else "top1": scores["score"] if protocol == "A"
                 else scores["known_top1"],
                 "per_species": {k: (v["score"] if protocol == "A" else v["known_top1"])
                                 for k, v in scores["species"].items()},
                 "seconds": round(time.perf_counter() - start, 1)}
        if name == "species removed":
            entry["router_accuracy"] = float((best["species"] == true[best.index]).mean())
            entry["router_accuracy_per_species"] = {
                s: float((best["species"][true[best.index] == s] == s).mean())
                for s in sorted(true.unique())}
            entry["mean_confidence"] = float(best["species_confidence"].mean())
            entry["wrong"] = [f"{i} ({best.loc[i, 'species']}, really {true[i]})"
                              for i in best.index[best["species"] != true[best.index]]]
        result[name] = entry
    return result


def splits(args, cache_dir, scratch: Path) -> dict:
    """The benchmark's labelled photos (database + queries with their answers) split again by
    ``wildreid split`` (wildlife-datasets' splitters, seed 0), then identified and scored: what a
    user gets from a benchmark made of their own photos."""
    from common import labelled_table

    from wildreid.splits import split_labelled, split_summary, write_split

    table = labelled_table(args.bench)
    if args.species:
        table = table[table["species"].isin(args.species.split(","))]
    table.to_csv(scratch / "labelled.csv", index=False)
    labelled = load_dataset(scratch, scratch / "labelled.csv", labelled=True).metadata
    result = {}
    for kind in ("closed", "open", "disjoint"):
        metadata, solution = split_labelled(labelled, kind, 0.3, 0.3, seed=0)
        folder = scratch / kind
        write_split(metadata, solution, folder)
        dataset = load_dataset(folder)
        model = identifier(args, cache_dir, closed=kind == "closed").fit(dataset.database)
        submission = model.decide(model.predict_candidates(dataset.query, k=5))
        scores = evaluate(submission, solution, dataset.metadata.astype(object))
        result[kind] = {"summary": split_summary(metadata).to_dict("records"),
                        "score": scores["score"], "known_top1": scores["known_top1"],
                        "per_species": {k: {"score": v["score"], "baks": v["baks"],
                                            "baus": v["baus"], "known_top1": v["known_top1"]}
                                        for k, v in scores["species"].items()}}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bench", type=Path, default=DEFAULT_BENCH)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--model", default="efficientnet-lite0")
    parser.add_argument("--local", default="")
    parser.add_argument("--shortlist", default="100")
    parser.add_argument("--long-side", type=int, default=512)
    parser.add_argument("--keypoints-on", default="auto")
    parser.add_argument("--species", default="")
    parser.add_argument("--parts", default="grouping,routing,splits")
    parser.add_argument("--cache-dir", default=None, help="reuse a feature cache")
    parser.add_argument("--tag", default="")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    args.shortlist = None if args.shortlist == "all" else int(args.shortlist)
    args.device = str(resolve_device(args.device))
    with tempfile.TemporaryDirectory() as scratch:
        cache_dir = args.cache_dir or scratch
        result = {"date": datetime.date.today().isoformat(), "machine": machine(args.device),
                  "model": args.model, "local": args.local, "shortlist": args.shortlist,
                  "long_side": args.long_side, "species": args.species or "all"}
        parts = args.parts.split(",")
        if "grouping" in parts:
            result["grouping"] = grouping(args, cache_dir)
            print(json.dumps(result["grouping"], indent=1, default=str))
        if "routing" in parts:
            result["routing"] = {p: routing(args, cache_dir, p) for p in ("A", "B")}
            print(json.dumps(result["routing"], indent=1, default=str))
        if "splits" in parts:
            result["splits"] = splits(args, cache_dir, Path(scratch))
            print(json.dumps(result["splits"], indent=1, default=str))
    name = "-".join(filter(None, ["open-world", args.model.replace("/", "_"),
                                  args.local.replace(",", "+"), args.tag,
                                  "cuda" if args.device.startswith("cuda") else "cpu",
                                  result["date"]]))
    path = unused_path(args.out / f"{name}.json")
    path.write_text(json.dumps(result, indent=1, default=str))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
