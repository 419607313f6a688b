"""The figures a user gets from one command: ``wildreid identify DATA --preset P`` then
``wildreid evaluate``, run as a user types them, from an empty cache, timed.

    python benchmarks/one_command.py DATA --solution SOLUTION --preset accurate --name cats-open
        [--metadata closedset_metadata.csv] [--threshold none] [--budget MINUTES]

Writes ``benchmarks/results/one-command-<name>-<preset>-cpu-<date>.json`` (never overwritten):
the commands, machine, wall and CPU time, peak memory, the evaluation, what the accurate preset
chose per species (``run.json``'s ``selection``), and every query's answer and top-5 candidates,
so each figure can be recomputed from the file alone.
"""

from __future__ import annotations

import argparse
import datetime
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
from common import cpu_name, unused_path

RESULTS = Path(__file__).resolve().parent / "results"
#: The folder holding the repository (and ../data, ../shared beside it).
BESIDE = f"{Path(__file__).resolve().parents[2]}/"
#: The command line a user types, from the same environment.
WILDREID = str(Path(sys.executable).parent / "wildreid")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("--solution", type=Path, required=True)
    parser.add_argument("--name", required=True, help="the benchmark's name in the result file")
    parser.add_argument("--preset", default="accurate")
    parser.add_argument("--metadata", default=None)
    parser.add_argument("--threshold", default=None)
    parser.add_argument("--budget", default=None, help="minutes (accurate preset)")
    parser.add_argument("--device", default="cpu")
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="one-command-") as folder:
        run = Path(folder) / "run"
        identify = ["wildreid", "identify", str(arguments.data), "--preset", arguments.preset,
                    "--device", arguments.device, "--output", str(run / "submission.csv"),
                    "--cache-dir", str(Path(folder) / "cache")]
        for option in ("metadata", "threshold", "budget"):
            if getattr(arguments, option) is not None:
                identify += [f"--{option}", str(getattr(arguments, option))]
        started, before = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run([WILDREID, *identify[1:]], check=True)
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        evaluate = ["wildreid", "evaluate", str(run / "submission.csv"), str(arguments.solution),
                    "--json"]
        scores = json.loads(subprocess.run([WILDREID, *evaluate[1:]],
                                           check=True, capture_output=True, text=True).stdout)
        info = json.loads((run / "run.json").read_text())
        submission = pd.read_csv(run / "submission.csv", dtype=str)
        candidates = pd.read_csv(run / "submission.candidates.csv")
    top5 = (candidates[candidates["rank"] <= 5].groupby("image_id")["identity"]
            .apply(lambda names: [str(name) for name in names]))
    today = datetime.date.today().isoformat()
    result = {
        "benchmark": arguments.name, "date": today,
        "machine": f"{cpu_name()}, {len(__import__('os').sched_getaffinity(0))} cores",
        # Paths as typed from the repository's root: the data beside it, the run in a temp folder.
        "commands": [" ".join(identify).replace(folder, "$TMP").replace(BESIDE, "../"),
                     " ".join(evaluate).replace(folder, "$TMP").replace(BESIDE, "../")],
        "wall_seconds": round(wall, 1),
        "cpu_seconds": round(after.ru_utime + after.ru_stime - before.ru_utime
                             - before.ru_stime, 1),
        "peak_rss_mib": round(after.ru_maxrss / 1024),
        "scores": scores,
        "selection": info.get("selection"), "chosen": info.get("chosen"),
        "thresholds": info.get("thresholds"),
        "answers": {row.image_id: {"identity": row.identity, "top5": top5.get(row.image_id, [])}
                    for row in submission.itertuples()},
    }
    device = "cuda" if arguments.device.startswith("cuda") else "cpu"
    path = unused_path(RESULTS / f"one-command-{arguments.name}-{arguments.preset}-{device}-"
                                 f"{today}.json")
    path.write_text(json.dumps(result, indent=1, default=str))
    print(json.dumps({"file": path.name, "wall_seconds": result["wall_seconds"],
                      "scores": scores.get("score", scores)}, default=str))


if __name__ == "__main__":
    main()
