"""Time per review decision in a catalog of N identified photos: confirming a waiting photo and
ranking the next one, with the model grown in place (the default) against fitted again from
scratch (features cached either way). Synthetic demo photos, never real ones.

    python benchmarks/catalog_decisions.py --photos 1000 10000

Writes ``benchmarks/results/catalog-decisions-<photos>-<device>-<date>.json`` (never
overwritten).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import unused_path
from wildreid.catalog import Catalog
from wildreid.demo import make_demo_dataset


def measure(photos: int, decisions: int, scratch: Path) -> dict:
    per_species = photos // (2 * 4)  # two species, four database photos per individual
    started = time.time()
    data = make_demo_dataset(scratch / f"demo-{photos}", per_species, 2, 4, 1, size=160)
    made = time.time() - started
    catalog = Catalog.create(scratch / f"catalog-{photos}")
    started = time.time()
    imported = catalog.add_dataset(data)
    added = time.time() - started
    waiting = catalog.unassigned()
    started = time.time()
    catalog.identify(waiting[0])  # the first fit: every photo described once (cold cache)
    first_fit = time.time() - started
    grown, refitted = [], []
    for step in range(decisions):
        current, following = waiting[2 * step], waiting[2 * step + 1]
        best = catalog.identify(current)["identity"].iloc[0]
        started = time.time()
        catalog.confirm(current, best)
        catalog.identify(following)  # the next photo ranked by the grown model
        grown.append(time.time() - started)
    for step in range(decisions, 2 * decisions):
        current, following = waiting[2 * step], waiting[2 * step + 1]
        best = catalog.identify(current)["identity"].iloc[0]
        started = time.time()
        catalog.confirm(current, best)
        catalog._identifier = None  # what every decision cost before: a fit from scratch
        catalog.identify(following)
        refitted.append(time.time() - started)
    return {"photos": imported.added, "waiting": imported.waiting, "decisions": decisions,
            "make_photos_s": round(made, 1), "catalog_add_s": round(added, 1),
            "first_fit_s": round(first_fit, 1),
            "decision_grown_s": {"median": round(float(np.median(grown)), 3),
                                 "max": round(float(np.max(grown)), 3)},
            "decision_refit_s": {"median": round(float(np.median(refitted)), 3),
                                 "max": round(float(np.max(refitted)), 3)},
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--decisions", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    for photos in args.photos:
        with tempfile.TemporaryDirectory() as scratch:
            result = measure(photos, args.decisions, Path(scratch))
        record = {"machine": f"{platform.processor() or platform.machine()}, "
                             f"{os.cpu_count()} cores", "device": "cpu", "date": str(date.today()),
                  "preset": "fast", "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
                  **result}
        print(json.dumps(record), flush=True)
        args.out.mkdir(parents=True, exist_ok=True)
        path = unused_path(args.out / f"catalog-decisions-{photos}-cpu-{date.today()}.json")
        path.write_text(json.dumps(record, indent=2))
        print(f"wrote {path}", flush=True)


if __name__ == "__main__":
    main()
