"""What the benchmark scripts share: where the shared nyala-lion benchmark lives, and how result
files are named (never overwritten)."""

import json
import os
import platform
import sys
from datetime import date
from pathlib import Path

import pandas as pd

#: ../shared/bench/nyala-lion beside the repository, as in CI.
DEFAULT_BENCH = Path(__file__).resolve().parents[2] / "shared" / "bench" / "nyala-lion"


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


def write_subset(bench: Path, folder: Path, known: int = 4, unknown: int = 2) -> Path:
    """An AnimalCLEF folder in ``folder`` (``metadata.csv`` with absolute paths into ``bench``,
    ``solution.csv``): per species ``known`` identities with 3 database images and 1 query each,
    and ``unknown`` query images of identities absent from the database."""
    metadata_all = pd.read_csv(bench / "metadata.csv", dtype=str, keep_default_na=False)
    solution = pd.read_csv(bench / "solution.csv", dtype=str)
    rows, answers = [], []
    for species in ("nyala", "lion"):
        meta = metadata_all[metadata_all["species"] == species]
        database = meta[meta["split"] == "database"]
        counts = database.groupby("identity").size()
        queries = meta[meta["split"] == "query"].merge(solution, on="image_id",
                                                       suffixes=("", "_true"))
        queried = set(queries["identity_true"])
        chosen = sorted(i for i in counts[counts >= 3].index if i in queried)[:known]
        for identity in chosen:
            rows.append(database[database["identity"] == identity].head(3))
            query = queries[queries["identity_true"] == identity].head(1)
            rows.append(query.drop(columns="identity_true"))
            answers.append(query[["image_id", "identity_true"]])
        absent = queries[~queries["identity_true"].isin(database["identity"])]
        first = absent.drop_duplicates("identity_true").head(unknown)
        rows.append(first.drop(columns="identity_true"))
        answers.append(first[["image_id", "identity_true"]])
    metadata = pd.concat(rows, ignore_index=True)
    metadata["path"] = [str(bench / p) for p in metadata["path"]]
    folder.mkdir(parents=True, exist_ok=True)
    metadata.to_csv(folder / "metadata.csv", index=False)
    truth = pd.concat(answers).rename(columns={"identity_true": "identity"})
    truth.to_csv(folder / "solution.csv", index=False)
    return folder


def labelled_table(bench: Path) -> pd.DataFrame:
    """Every photo of ``bench`` with its true identity (queries' from ``solution.csv``), absolute
    paths, no split: the labelled photos a user would split into a benchmark of their own."""
    metadata = pd.read_csv(bench / "metadata.csv", dtype=str, keep_default_na=False)
    truth = pd.read_csv(bench / "solution.csv", dtype=str).set_index("image_id")["identity"]
    query = metadata["split"] == "query"
    metadata.loc[query, "identity"] = metadata.loc[query, "image_id"].map(truth)
    metadata["path"] = [str(bench / p) for p in metadata["path"]]
    return metadata.drop(columns="split")


def write_labelled(bench: Path, folder: Path, identities: int = 12, per_identity: int = 4) -> Path:
    """``folder/labelled.csv``: per species the first ``identities`` individuals with at least
    ``per_identity`` photos, ``per_identity`` photos each (real photos, absolute paths)."""
    table = labelled_table(bench)
    chosen = []
    for _, part in table.groupby("species", sort=False):
        counts = part.groupby("identity").size()
        names = sorted(counts[counts >= per_identity].index)[:identities]
        chosen.append(part[part["identity"].isin(names)].groupby("identity").head(per_identity))
    folder.mkdir(parents=True, exist_ok=True)
    pd.concat(chosen).to_csv(folder / "labelled.csv", index=False)
    return folder / "labelled.csv"
