"""End-to-end time of ``--preset accurate`` at AnimalCLEF scale on synthetic photos.

    python benchmarks/scale_run.py [--individuals 1875] [--database-images 4] [--query-images 1]
        [--unknown 225] [--shortlist 100] [--device cuda] [--size 384] [--local sift]
        [--ray local|auto|ADDRESS]

Defaults give, per synthetic species (spotted and striped), 1,875 known individuals x 4 database
photos and one query photo of each of them and of 225 unknown individuals: 15,000 database photos
and 4,200 queries in all: the AnimalCLEF 2025 scale (15,000 x 2,100), with twice the
queries. Everything runs from an empty
cache: description, segmentation, keypoints, calibration pairs, query pairs, decision. Writes
``scale-<preset>[-<local>][-ray]-<device>-<database images>-<date>.json`` (never over an
existing file) with the stage times, the peak resident memory of this process (with ``--ray``
the workers' memory is theirs, not counted) and the score on the synthetic answers.
"""

from __future__ import annotations

import argparse
import datetime
import json
import resource
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from common import unused_path

from wildreid.data import load_dataset
from wildreid.defaults import PRESETS
from wildreid.demo import make_demo_dataset
from wildreid.features import resolve_device
from wildreid.metrics import evaluate
from wildreid.pipeline import Identifier
from wildreid.rerank import LocalReranking


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--individuals", type=int, default=1875)
    parser.add_argument("--unknown", type=int, default=225)
    parser.add_argument("--database-images", type=int, default=4)
    parser.add_argument("--query-images", type=int, default=1)
    parser.add_argument("--shortlist", type=int, default=100)
    parser.add_argument("--size", type=int, default=384)
    parser.add_argument("--preset", default="accurate")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--local", default=None, help="local matchers instead of the preset's")
    parser.add_argument("--ray", default=None, help="run on a Ray cluster (local, auto, ADDRESS)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    device = str(resolve_device(args.device))
    with tempfile.TemporaryDirectory() as scratch:
        started = time.perf_counter()
        root = make_demo_dataset(Path(scratch) / "data", args.individuals, args.unknown,
                                 args.database_images, args.query_images, size=args.size)
        synthesis = time.perf_counter() - started
        dataset = load_dataset(root)
        start = time.perf_counter()
        local = dict(PRESETS[args.preset] or {})
        if args.local is not None:
            local["features"] = tuple(n for n in args.local.split(",") if n)
        reranking = (LocalReranking(**local, shortlist=args.shortlist)
                     if local.get("features") else None)
        identifier = Identifier(device=device, cache_dir=Path(scratch) / "cache",
                                ray=args.ray, reranking=reranking)
        identifier.fit(dataset.database)
        fitted = time.perf_counter() - start
        candidates = identifier.predict_candidates(dataset.query, k=5)
        submission = identifier.decide(candidates)
        total = time.perf_counter() - start
        scores = evaluate(submission, pd.read_csv(root / "solution.csv", dtype=str),
                          dataset.metadata.astype(object), candidates)
    pairs = (identifier.reranking_.local_scorer_.pairs_per_second if identifier.reranking_ else {})
    date = datetime.date.today().isoformat()
    machine = torch.cuda.get_device_name(0) if device.startswith("cuda") else "CPU"
    report = {"date": date, "machine": machine, "command": " ".join(sys.argv),
              "database_images": len(dataset.database), "queries": len(dataset.query),
              "synthesis_s": round(synthesis, 1), "fit_s": round(fitted, 1),
              "end_to_end_s": round(total, 1), "pairs_per_s": pairs, "ray": args.ray,
              "local": local.get("features"),
              "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
              "score": scores["score"], "closed_set_top1": scores.get("closed_set_top1")}
    args.out.mkdir(parents=True, exist_ok=True)
    name = "-".join(filter(None, ["scale", args.preset, args.local and args.local.replace(",", "+"),
                                  "ray" if args.ray else "", device.split(":")[0],
                                  str(len(dataset.database)), date]))
    unused_path(args.out / f"{name}.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
