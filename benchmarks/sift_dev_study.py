"""SIFT settings chosen on a development split carved from the database, then measured once on
protocol B (the published closed-set split), every query against every database image.

    python benchmarks/sift_dev_study.py [--species lion] [--cache-dir DIR] [--out DIR]

Development split: the photos in the database of both protocols (``common.development_database``:
never a query of protocol A or B); one random image of every identity with two or more is a
development query, the rest the development gallery (the benchmark's queries and
answers are never read while choosing). Settings are searched greedily, one factor at a time from
the settings before this study (each change kept when it raises development top-1): keypoints on
the animal or the whole image, detected on the animal's box or the whole frame, the long side
images are resized to, keypoints kept, RootSIFT or plain SIFT, mutual check, ratio; and the pair
score (sum of match confidences, or the count of matches with ratio < 0.8 as in the published
baseline). The chosen setting and the starting one are then run once on protocol
B. Writes ``benchmarks/results/sift-dev-<species>-both-databases-cpu-<date>.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from common import DEFAULT_BENCH, DEVELOPMENT_SPLIT, cpu_name, development_database, unused_path

from wildreid.data import load_dataset
from wildreid.isolation import Isolator, Segmenter
from wildreid.local import KeypointExtractor, Sift
from wildreid.matching import NearestNeighbourMatcher, score_pairs

#: The settings before this study (keypoints detected on the whole frame).
DEFAULT = {"keypoints_on": "animal", "crop": False, "long_side": 512, "max_keypoints": 512,
           "root": True, "mutual": True, "ratio": 0.85}
#: Alternatives tried for each factor, in this order.
FACTORS = {"keypoints_on": ["image"], "crop": [True], "long_side": [256, 384, 768],
           "max_keypoints": [1024], "root": [False], "mutual": [False], "ratio": [0.8, 0.9]}
SCORES = ("confidence_sum", "matches@0.2")


def dev_split(identities: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """One random image of each identity with two or more images as query; the rest gallery."""
    rng = np.random.default_rng(seed)
    queries = []
    for name in np.unique(identities):
        rows = np.flatnonzero(identities == name)
        if len(rows) >= 2:
            queries.append(rng.choice(rows))
    queries = np.sort(np.array(queries))
    return queries, np.setdiff1d(np.arange(len(identities)), queries)


class Runner:
    def __init__(self, paths: list[str], regions, cache_dir: Path):
        self.paths, self.regions, self.cache_dir = paths, regions, cache_dir

    def top1(self, setting: dict, identities: np.ndarray, queries: np.ndarray,
             gallery: np.ndarray, truth: np.ndarray | None = None) -> dict:
        """Top-1 of every query against every gallery image (identity score: best image)."""
        features = Sift(setting["max_keypoints"], setting["long_side"], "cpu",
                        crop=setting["crop"], root=setting["root"])
        regions = self.regions if setting["keypoints_on"] == "animal" else None
        keypoints = KeypointExtractor(features, self.cache_dir, progress=False)(
            self.paths, regions)
        matcher = NearestNeighbourMatcher(setting["ratio"], setting["mutual"], device="cpu")
        pairs = np.stack(np.meshgrid(queries, gallery, indexing="ij"), -1).reshape(-1, 2)
        start = time.perf_counter()
        found = score_pairs(matcher, keypoints, pairs, progress=False)
        seconds = time.perf_counter() - start
        truth = identities[queries] if truth is None else truth
        result = {"pairs": len(pairs), "pairs_per_s": round(len(pairs) / seconds, 1)}
        for score in SCORES:
            table = found[score].reshape(len(queries), len(gallery))
            result[score] = float(np.mean(identities[gallery][table.argmax(1)] == truth))
        return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--species", default="lion")
    parser.add_argument("--bench", type=Path, default=DEFAULT_BENCH)
    parser.add_argument("--cache-dir", type=Path, default=Path("/tmp/wildreid-study-cache"))
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args(argv)
    dataset = load_dataset(args.bench, "closedset_metadata.csv")
    metadata = dataset.metadata[dataset.metadata["species"] == args.species].reset_index(drop=True)
    database = np.flatnonzero(metadata["split"].to_numpy() == "database")
    query = np.flatnonzero(metadata["split"].to_numpy() == "query")
    identities = metadata["identity"].fillna("").astype(str).to_numpy()
    paths = metadata["filepath"].astype(str).tolist()
    regions = Isolator(Segmenter(), cache_dir=args.cache_dir)(metadata, "regions")
    runner = Runner(paths, regions, args.cache_dir)
    development = np.flatnonzero(metadata["image_id"].isin(
        development_database(args.bench, args.species)["image_id"]).to_numpy())
    dev_queries, dev_gallery = dev_split(identities[development])
    dev_queries, dev_gallery = development[dev_queries], development[dev_gallery]
    print(f"{args.species}: development {len(dev_queries)} queries x {len(dev_gallery)} images")

    trials = []

    def trial(setting: dict) -> float:
        result = runner.top1(setting, identities, dev_queries, dev_gallery)
        trials.append({"setting": dict(setting), **result})
        best = max(result[s] for s in SCORES)
        print(f"  {setting}: " + ", ".join(f"{s} {100 * result[s]:.1f} %" for s in SCORES)
              + f" ({result['pairs_per_s']} pairs/s)", flush=True)
        return best

    chosen, best = dict(DEFAULT), trial(DEFAULT)
    for factor, values in FACTORS.items():
        for value in values:
            candidate = {**chosen, factor: value}
            top1 = trial(candidate)
            if top1 > best:
                chosen, best = candidate, top1
    chosen_trial = next(t for t in trials if t["setting"] == chosen)
    chosen_score = max(SCORES, key=lambda s: chosen_trial[s])
    print(f"chosen on development: {chosen}, score {chosen_score}")

    # Only now are the benchmark's answers read.
    answers = pd.read_csv(args.bench / "closedset_solution.csv", dtype=str)
    truth = answers.set_index("image_id")["identity"].reindex(
        metadata["image_id"].iloc[query]).to_numpy()
    protocol_b = {}
    for name, setting in (("default", DEFAULT), ("chosen", chosen)):
        protocol_b[name] = {"setting": setting,
                            **runner.top1(setting, identities, query, database, truth)}
        print(f"protocol B, {name} {setting}: " + ", ".join(
            f"{s} {100 * protocol_b[name][s]:.1f} %" for s in SCORES), flush=True)
    date = datetime.date.today().isoformat()
    report = {"date": date, "machine": f"{cpu_name()}, {os.cpu_count()} cores", "species": args.species,
              "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
              "development_split": DEVELOPMENT_SPLIT,
              "development": {"queries": len(dev_queries), "gallery": len(dev_gallery),
                              "trials": trials, "chosen": chosen, "chosen_score": chosen_score},
              "protocol_B": protocol_b}
    args.out.mkdir(parents=True, exist_ok=True)
    path = unused_path(args.out / f"sift-dev-{args.species}-both-databases-cpu-{date}.json")
    path.write_text(json.dumps(report, indent=2))
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
