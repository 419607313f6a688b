"""Benchmark on ../shared/bench/nyala-lion: protocol A (open-set) and protocol B (closed-set).

    python benchmarks/nyala_lion.py [--device auto] [--model efficientnet-lite0] [--out DIR]

Each protocol runs from an empty feature cache, so wall time and images/s include decoding and
description. Writes ``benchmarks/results/nyala-lion-<model>-<device>-<date>.json`` and prints a
Markdown row per protocol for BENCHMARKS.md. Protocol A reports the score with thresholds fitted
on the database (what a user gets) next to the score with the best threshold per species chosen
on the answers (an upper bound): the gap measures the calibration.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from common import DEFAULT_BENCH, unused_path

from wildreid.data import Dataset, load_dataset
from wildreid.features import resolve_device
from wildreid.isolation import parse_isolation
from wildreid.metrics import best_threshold, evaluate, threshold_curve
from wildreid.per_species import parse_by_species
from wildreid.pipeline import Identifier
from wildreid.rerank import (
    AGGREGATIONS,
    FUSIONS,
    KEYPOINT_PLACES,
    ORIENTATIONS,
    PAIR_SCORE_CHOICES,
)


def machine(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(0)
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {torch.get_num_threads()} threads"


def oracle(candidates: pd.DataFrame, solution: pd.DataFrame, database_ids: set[str]) -> dict:
    """Best per-species threshold chosen on the true answers: the calibration ceiling."""
    top = candidates[candidates["rank"] == 1].merge(
        solution.rename(columns={"identity": "truth"}), on="image_id")
    result = {}
    for species, group in top.groupby("species"):
        curve = threshold_curve(group["truth"], group["identity"], group["score"],
                                ~group["truth"].isin(database_ids))
        threshold, score = best_threshold(curve)
        result[species] = {"threshold": threshold, "score": score}
    result["score"] = float(np.mean([v["score"] for v in result.values()]))
    return result


def subset(dataset: Dataset, answers: pd.DataFrame, identities: int, seed: int = 0) -> Dataset:
    """Reduced scale: per species, ``identities`` random individuals (their database images and
    queries) and as many unknown ones as keep the protocol's share of unknown queries."""
    rng = np.random.default_rng(seed)
    truth = dataset.metadata["image_id"].map(answers.set_index("image_id")["identity"])
    individual = dataset.metadata["identity"].fillna(truth)
    keep = []
    for _, rows in dataset.metadata.groupby("species"):
        names = individual[rows.index]
        known = sorted(set(names[rows["split"] == "database"]))
        unknown = sorted(set(names) - set(known))
        chosen = rng.choice(known, min(identities, len(known)), replace=False).tolist()
        share = len(unknown) / max(1, len(known) + len(unknown))
        extra = min(len(unknown), round(len(chosen) * share / max(1e-9, 1 - share)))
        chosen += rng.choice(unknown, extra, replace=False).tolist() if extra else []
        keep.extend(rows.index[names.isin(chosen)])
    return Dataset(dataset.metadata.loc[sorted(keep)].reset_index(drop=True), dataset.source)


def run_protocol(name: str, metadata: str, solution: str, args, aggregation: str,
                 cache_dir: str | None, isolation: str = "none") -> dict:
    dataset = load_dataset(args.bench, metadata)
    if args.species:
        keep = dataset.metadata["species"].isin(args.species.split(","))
        dataset = Dataset(dataset.metadata[keep].reset_index(drop=True), dataset.source)
    if args.identities:
        dataset = subset(dataset, pd.read_csv(args.bench / solution, dtype=str), args.identities)
    closed = name == "B"
    identifier = Identifier(args.model, threshold=None if closed else "auto",
                            aggregation=aggregation, device=args.device,
                            batch_size=args.batch_size, cache_dir=cache_dir,
                            isolation=parse_isolation(isolation),
                            segmenter_weights=args.segmenter_weights,
                            local=[n for n in args.local.split(",") if n], shortlist=args.shortlist,
                            max_keypoints=args.max_keypoints, long_side=args.long_side,
                            keypoints_on=parse_by_species(args.keypoints_on, KEYPOINT_PLACES,
                                                          "keypoints-on", "lion=image"),
                            mirror=args.mirror, keep_pair_scores=args.dump_pairs,
                            fusion=parse_by_species(args.fusion, FUSIONS, "fusion", "lion=local"),
                            orientation=parse_by_species(args.orientation, ORIENTATIONS,
                                                         "orientation", "nyala=same"),
                            pair_score=parse_by_species(args.pair_score, PAIR_SCORE_CHOICES,
                                                        "pair-score", "nyala=inliers"),
                            local_aggregation=parse_by_species(
                                args.local_aggregation, AGGREGATIONS, "local-aggregation",
                                "nyala=top2"), local_cascade=args.cascade)
    start = time.perf_counter()
    described = identifier.describe(dataset.metadata, "all images")
    describe_seconds = time.perf_counter() - start
    identifier.fit(dataset.database)
    candidates = identifier.predict_candidates(dataset.query, k=5)
    submission = identifier.decide(candidates)
    wall = time.perf_counter() - start
    answers = pd.read_csv(args.bench / solution, dtype=str)
    answers = answers[answers["image_id"].isin(dataset.query["image_id"])]
    scores = evaluate(submission, answers, dataset.metadata.astype(object), candidates)
    row = {
        "protocol": name, "identities_per_species": args.identities or "all",
        "species": args.species or "all",
        "queries": len(dataset.query), "aggregation": aggregation, "isolation": isolation,
        "local": args.local, "shortlist": args.shortlist, "keypoints_on": args.keypoints_on,
        "max_keypoints": args.max_keypoints, "long_side": args.long_side, "mirror": args.mirror,
        "pairs_per_s": (identifier.reranking_.local_scorer_.pairs_per_second
                        if identifier.reranking_ else None),
        "keypoints_on_chosen": learned(identifier, "keypoints_on_"),
        "keypoint_choice": learned(identifier, "keypoint_choice_"),
        "fusion": args.fusion,
        "fusion_chosen": learned(identifier, "fusion_", list),
        "fusion_choice": learned(identifier, "fusion_choice_"),
        "orientation": args.orientation,
        "orientation_chosen": learned(identifier, "orientation_"),
        "orientation_choice": learned(identifier, "orientation_choice_"),
        "pair_score": args.pair_score,
        "pair_score_chosen": learned(identifier, "pair_score_"),
        "pair_score_choice": learned(identifier, "pair_score_choice_"),
        "local_aggregation": args.local_aggregation,
        "local_aggregation_chosen": learned(identifier, "aggregation_"),
        "local_aggregation_choice": learned(identifier, "aggregation_choice_"),
        "cascade": args.cascade,
        "cascade_pair_score_chosen": learned(identifier, "cascade_pair_score_"),
        "cascade_pair_score_choice": learned(identifier, "cascade_pair_score_choice_"),
        "cascade_pairs_per_s": (identifier.reranking_.cascade_scoring_.scorers[0].pairs_per_second
                                if identifier.reranking_ and
                                identifier.reranking_.cascade_scoring_ else None),
        "wall_s": round(wall, 2),
        "images": len(described), "images_per_s": round(len(described) / describe_seconds, 1),
        "thresholds": {str(k): v for k, v in identifier.decision_.thresholds.items()},
        "metrics": scores,
    }
    if args.dump_pairs and identifier.reranking_ is not None:
        dump_pairs(identifier, dataset, answers, name, args.out)
    if not closed:
        database_ids = set(dataset.database["identity"])
        row["oracle"] = oracle(candidates, answers, database_ids)
    return row


def dump_pairs(identifier, dataset, answers: pd.DataFrame, protocol: str, out: Path) -> None:
    """Every pair score with its truth, for offline studies of calibration and fusion
    (``benchmarks/fusion_study.py``): ``pairs-<protocol>.csv.gz``; with a cascade, the later
    matchers' columns on the pairs they scored (``cascaded``), empty on the others."""
    reranking = identifier.reranking_
    database = dataset.database
    truth = answers.set_index("image_id")["identity"]
    query_ids = truth.reindex(dataset.query["image_id"]).to_numpy()
    tables = []
    for stage, table in reranking.scoring_.pair_tables.items():
        if stage not in ("calibration pairs", "query pairs"):  # others index their own subsets
            continue
        table = table.copy()
        cascade = (reranking.cascade_scoring_.pair_tables.get(f"{stage}: cascade")
                   if reranking.cascade_scoring_ is not None else None)
        if cascade is not None:  # the later matchers' columns where they scored the pair
            table = table.merge(cascade.assign(cascaded=True), on=["first", "second"],
                                how="left")
            table["cascaded"] = table["cascaded"].eq(True)
        table["stage"] = stage
        # Both stages score (query, database) pairs: rows of the queries, rows of the database.
        query_stage = stage.startswith("query")
        table["query"] = table["first"]
        table["query_identity"] = (query_ids if query_stage else
                                   database["identity"].to_numpy())[table["first"]]
        table["database_image"] = table["second"]
        table["database_identity"] = database["identity"].to_numpy()[table["database_image"]]
        table["species"] = database["species"].to_numpy()[table["database_image"]]
        tables.append(table)
    out.mkdir(parents=True, exist_ok=True)
    pd.concat(tables, ignore_index=True).to_csv(out / f"pairs-{protocol}.csv.gz", index=False)


def markdown(row: dict, model: str, device: str, date: str) -> str:
    def pct(v):
        return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}"

    species = row["metrics"]["species"]
    names = [s for s in ("nyala", "lion") if s in species]
    per = " / ".join(f"{pct(species[s]['known_top1'])}" for s in names)
    if row["protocol"] == "A":
        each = ", ".join(f"{s} {species[s]['score']:.3f}" for s in names)
        quality = (f"score {row['metrics']['score']:.3f} ({each}); oracle-threshold "
                   f"{row['oracle']['score']:.3f}; known top-1 {'/'.join(names)} {per} %")
    else:
        quality = f"top-1 {'/'.join(names)} {per} %"
    local = (f" + {row['local']} {row['max_keypoints']} kp on {row['keypoints_on']}, "
             f"shortlist {row['shortlist']}" if row.get("local") else "")
    return (f"| {date} | {row['protocol']} | {model} ({row['aggregation']}, isolation "
            f"{row.get('isolation', 'none')}){local} | {device} | {quality} "
            f"| {row['wall_s']:.0f} s | {row['images_per_s']:.0f} | {row['peak_rss_mib']:.0f} MiB |")


def learned(identifier: Identifier, name: str, convert=lambda value: value) -> dict | None:
    """A per-species choice the re-ranking learned on the database (``None`` without one), by
    species name (``"None"``: the rest)."""
    value = getattr(identifier.reranking_, name, None)  # None: no re-ranking, or no cascade
    return None if value is None else {str(key): convert(v) for key, v in value.items()}


def build_parser() -> argparse.ArgumentParser:
    """This benchmark's options (also the evaluation settings other benchmarks start from)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--model", default="efficientnet-lite0")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--aggregations", default="max,mean")
    parser.add_argument("--protocols", default="A,B")
    parser.add_argument("--isolations", default="none",
                        help="';'-separated isolation settings, e.g. 'none;crop;mask;nyala=crop'")
    parser.add_argument("--local", default="", help="local matchers, e.g. aliked or aliked,sift")
    parser.add_argument("--shortlist", type=lambda v: None if v == "all" else int(v), default=100,
                        help="images re-ranked per query, or 'all'")
    parser.add_argument("--max-keypoints", type=int, default=512)
    parser.add_argument("--keypoints-on", default="auto",
                        help="animal | image | auto, or per species: nyala=animal,lion=image")
    parser.add_argument("--long-side", type=int, default=512)
    parser.add_argument("--species", default="", help="only these species, e.g. lion")
    parser.add_argument("--mirror", default="none", help="none | opposite | all")
    parser.add_argument("--fusion", default="auto",
                        help="all | local | auto, or per species: nyala=all,lion=local")
    parser.add_argument("--orientation", default="auto",
                        help="any | same | auto, or per species: nyala=same,lion=any")
    parser.add_argument("--pair-score", default="auto",
                        help="confidence_sum | matches@0.5 ... | inliers | auto, or per species: "
                        "nyala=inliers,lion=auto")
    parser.add_argument("--local-aggregation", default="max",
                        help="max | top2 | auto, or per species: nyala=top2,lion=max")
    parser.add_argument("--cascade", type=int, default=None,
                        help="with --local first,later: the later matchers score each query's "
                        "best CASCADE images by the first")
    parser.add_argument("--identities", type=int, default=0,
                        help="reduced scale: this many random individuals per species")
    parser.add_argument("--dump-pairs", action="store_true",
                        help="write every pair score to OUT/pairs-<protocol>.csv.gz")
    parser.add_argument("--tag", default="", help="added to the results file name")
    parser.add_argument("--segmenter-weights", default=None, help="local u2netp.onnx")
    parser.add_argument("--cache-dir", default=None,
                        help="reuse this cache (default: an empty one per protocol, so wall time "
                        "includes description)")
    parser.add_argument("--bench", type=Path, default=DEFAULT_BENCH, help="benchmark folder")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.bench.is_dir():
        sys.exit(f"{args.bench}: benchmark data not found (expected ../shared beside the repo)")
    device = str(resolve_device(args.device))
    date = datetime.date.today().isoformat()
    rows = []
    files = {"A": ("metadata.csv", "solution.csv"),
             "B": ("closedset_metadata.csv", "closedset_solution.csv")}
    runs = [(a, i) for i in args.isolations.split(";") for a in args.aggregations.split(",")]
    report = {"date": date, "machine": machine(device), "device": device, "model": args.model,
              "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "runs": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    tag = f"-{args.tag}" if args.tag else ""
    model = Path(args.model).stem if Path(args.model).suffix == ".pt" else args.model  # no /tmp in names
    path = unused_path(args.out / f"nyala-lion-{model.replace('/', '_')}{tag}-{device}-{date}.json")
    planned = len(args.protocols.split(",")) * len(runs)
    report["complete"] = False

    def save() -> None:
        """The report as it stands, replacing the file whole (a kill leaves the last one)."""
        partial = path.with_name(path.name + ".partial")
        partial.write_text(json.dumps(report, indent=2, default=lambda v: None))
        os.replace(partial, path)

    save()  # the name is taken at once: a second run started now picks another
    for protocol in args.protocols.split(","):
        with tempfile.TemporaryDirectory() as scratch:
            for number, (aggregation, isolation) in enumerate(runs):
                if device.startswith("cuda"):
                    torch.cuda.reset_peak_memory_stats()
                row = run_protocol(protocol, *files[protocol], args, aggregation,
                                   args.cache_dir or scratch, isolation)
                row["peak_rss_mib"] = max(resource.getrusage(who).ru_maxrss for who in (
                    resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)) / 1024
                if device.startswith("cuda"):
                    row["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
                row["cached_features"] = bool(args.cache_dir) or (
                    number > 0 and runs[number - 1][1] == isolation)
                rows.append(row)
                # Written after every run: a later one that fails loses nothing finished.
                report["complete"] = len(rows) == planned
                save()
    print(f"machine: {report['machine']}\nresults: {path}")
    for row in rows:
        note = " (features cached)" if row["cached_features"] else ""
        print(markdown(row, args.model, report["machine"], date) + note)
    return 0


if __name__ == "__main__":
    sys.exit(main())
