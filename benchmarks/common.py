"""What the benchmark scripts share: where the shared nyala-lion benchmark lives, and how result
files are named (never overwritten)."""

import json
import os
import platform
import sys
from datetime import date
from pathlib import Path

import pandas as pd

from wildreid.testing import labelled_table, write_labelled, write_subset  # noqa: F401

#: ../shared/bench/nyala-lion beside the repository, as in CI.
DEFAULT_BENCH = Path(__file__).resolve().parents[2] / "shared" / "bench" / "nyala-lion"


def cpu_name() -> str:
    """The processor's model name (``/proc/cpuinfo``), else what the platform says."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def unused_path(path: Path) -> Path:
    """``path``, or ``path`` with ``-2``, ``-3``... before its suffix when it exists: a result file
    is never overwritten."""
    path = Path(path)
    candidate, number = path, 1
    while candidate.exists():
        number += 1
        candidate = path.with_name(f"{path.stem}-{number}{path.suffix}")
    return candidate


#: Where the development studies carve their split from, as written in their result files.
DEVELOPMENT_SPLIT = "photos in the database of both protocols (A's metadata.csv, B's closedset)"


def development_database(bench: Path, species: str) -> pd.DataFrame:
    """The ``species``' photos that lie in the database of both protocols: B's
    (``closedset_metadata.csv``) and A's (``metadata.csv``), loaded as the pipeline loads them
    (absolute ``filepath`` column). No query of either protocol is among them, so a setting chosen
    on a development split of these photos has seen neither benchmark's queries; protocol B's
    database alone holds 867 of protocol A's 1,092 nyala queries (and A's database some of B's)."""
    from wildreid.data import load_dataset  # the library is only needed by the studies

    metadata = load_dataset(bench, "closedset_metadata.csv").metadata
    protocol_a = pd.read_csv(bench / "metadata.csv", dtype=str, keep_default_na=False)
    in_a = protocol_a.loc[protocol_a["split"] == "database", "image_id"]
    chosen = ((metadata["species"] == species) & (metadata["split"] == "database")
              & metadata["image_id"].isin(in_a))
    return metadata[chosen].reset_index(drop=True)


def write_cpu_result(folder: Path, name: str, settings: dict, results: list) -> Path:
    """``<folder>/<name>-cpu-<date>.json`` (never over an existing one) with the machine, date,
    command line, ``settings`` and ``results``; printed and returned."""
    record = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
              "date": str(date.today()),
              "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), **settings,
              "results": results}
    folder.mkdir(parents=True, exist_ok=True)
    path = unused_path(folder / f"{name}-cpu-{date.today()}.json")
    path.write_text(json.dumps(record, indent=2))
    print(f"wrote {path}")
    return path
