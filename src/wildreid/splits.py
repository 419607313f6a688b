"""Benchmark splits of a user's labelled photos, in the AnimalCLEF layout (``wildreid split``).

The splitters are wildlife-datasets' own (the field's library; ``pip install 'wildreid[wildlife]'``),
applied to each species apart so every species gets known and unknown individuals:

* ``closed``: every individual in both the database and the queries (``ClosedSetSplit``);
* ``open``: ``unknown_share`` of the images belong to individuals that appear only as queries,
  ``query_share`` of each other individual's images are queries (``OpenSetSplit``) — the
  AnimalCLEF task;
* ``disjoint``: no individual in both (``DisjointSetSplit``; ``unknown_share`` of the images are
  queries);
* ``time``: as ``open``, but each known individual's later days are its queries and one day's
  sightings are never split (``TimeProportionOpenSetSplit``; needs ``date``).

The output folder gets ``metadata.csv`` (queries without identity, paths relative to the
folder: photos are not copied) and ``solution.csv`` (``image_id, identity``), so
``wildreid identify DIR`` and ``wildreid evaluate ... DIR/solution.csv`` run on it as on the
shared benchmark.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from wildreid.data import COLUMNS, REGION_COLUMNS, DatasetError, list_examples

SPLIT_KINDS = ("closed", "open", "disjoint", "time")
EXTRA_HINT = "install wildlife-datasets: pip install 'wildreid[wildlife]'"


def _splitters():
    try:
        from wildlife_datasets import splits
    except ImportError:
        raise ImportError(f"splits are made by wildlife-datasets' splitters: {EXTRA_HINT}") from None
    return splits


def _splitter(kind: str, query_share: float, unknown_share: float, seed: int):
    splits = _splitters()
    # wildlife-datasets' ratio_train is the share of all images in the database.
    known_in_database = (1 - unknown_share) * (1 - query_share)
    if kind == "closed":
        return splits.ClosedSetSplit(1 - query_share, seed=seed)
    if kind == "open":
        return splits.OpenSetSplit(known_in_database, ratio_class_test=unknown_share, seed=seed)
    if kind == "disjoint":
        return splits.DisjointSetSplit(ratio_class_test=unknown_share, seed=seed)
    return splits.TimeProportionOpenSetSplit(known_in_database, ratio_class_test=unknown_share,
                                             seed=seed)


def split_labelled(images: pd.DataFrame, kind: str = "open", query_share: float = 0.3,
                   unknown_share: float = 0.3, seed: int = 0,
                   source: str | Path = "labelled data") -> tuple[pd.DataFrame, pd.DataFrame]:
    """``images`` (every row with an ``identity``; optional ``species``, ``date``) with ``split``
    set to ``database`` or ``query`` per species, and the solution of the queries. Query rows
    keep their identity here; :func:`write_split` blanks it in the metadata it writes."""
    if kind not in SPLIT_KINDS:
        raise ValueError(f"unknown split kind {kind!r}; use one of {', '.join(SPLIT_KINDS)}")
    for name, share in (("query share", query_share), ("unknown share", unknown_share)):
        if not 0 < share < 1:
            raise ValueError(f"{name} must be between 0 and 1 (exclusive), not {share}")
    problems = []
    if images["identity"].isna().any():
        problems.append(f"{int(images['identity'].isna().sum())} image(s) without identity: "
                        f"{list_examples(images['image_id'][images['identity'].isna()])}")
    if kind == "time":
        undated = images["image_id"][images["date"].isna()]
        if len(undated):
            problems.append(f"a time-aware split needs a date on every image; {len(undated)} "
                            f"have none: {list_examples(undated)}")
        else:
            parsed = pd.to_datetime(images["date"], errors="coerce", format="mixed")
            bad = images["image_id"][parsed.isna()]
            if len(bad):
                problems.append(f"{len(bad)} date(s) are not dates: {list_examples(bad)}")
    if problems:
        raise DatasetError(source, problems)
    splitter = _splitter(kind, query_share, unknown_share, seed)
    frame = images.reset_index(drop=True).copy()
    frame["split"] = pd.NA
    species = frame["species"].astype(object).where(frame["species"].notna(), "")
    for name in dict.fromkeys(species):
        rows = frame[species == name]
        if rows["identity"].nunique() < 2:
            raise DatasetError(source, [f"species {name or '(blank)'!r} has fewer than 2 "
                                        "individuals: nothing to split"])
        # wildlife-datasets reads identities and dates as plain Python values.
        part = pd.DataFrame({"identity": rows["identity"].astype(str).to_numpy(),
                             "date": rows["date"].astype(object).to_numpy()}, index=rows.index)
        (database, query), = splitter.split(part)
        frame.loc[np.asarray(database, dtype=int), "split"] = "database"
        frame.loc[np.asarray(query, dtype=int), "split"] = "query"
    frame = frame[frame["split"].notna()].reset_index(drop=True)  # (splitters drop nothing here)
    solution = frame.loc[frame["split"] == "query", ["image_id", "identity"]].reset_index(drop=True)
    return frame, solution


def split_summary(metadata: pd.DataFrame) -> pd.DataFrame:
    """Per species: database images and individuals, known and unknown queries and individuals."""
    rows = []
    species = metadata["species"].astype(object).where(metadata["species"].notna(), "")
    for name in dict.fromkeys(species):
        part = metadata[species == name]
        database = part[part["split"] == "database"]
        query = part[part["split"] == "query"]
        unknown = ~query["identity"].isin(set(database["identity"]))
        rows.append({"species": name or "(blank)", "database images": len(database),
                     "database individuals": database["identity"].nunique(),
                     "known queries": int((~unknown).sum()),
                     "unknown queries": int(unknown.sum()),
                     "unknown individuals": query["identity"][unknown].nunique()})
    return pd.DataFrame(rows)


def write_split(metadata: pd.DataFrame, solution: pd.DataFrame, output: str | Path
                ) -> tuple[Path, Path]:
    """Write ``output/metadata.csv`` (query identities blank, paths relative to ``output``) and
    ``output/solution.csv``; existing files are never replaced."""
    output = Path(output)
    targets = output / "metadata.csv", output / "solution.csv"
    existing = [str(t) for t in targets if t.exists()]
    if existing:
        raise FileExistsError(f"{', '.join(existing)} already exist(s): choose another --output "
                              "folder (a split is never written over)")
    output.mkdir(parents=True, exist_ok=True)
    written = metadata.copy()
    written["path"] = [os.path.relpath(path, output.resolve()) for path in written["filepath"]]
    if "maskpath" in written.columns:
        written["mask"] = [os.path.relpath(p, output.resolve()) if isinstance(p, str) else pd.NA
                           for p in written["maskpath"]]
    written.loc[written["split"] == "query", "identity"] = pd.NA
    columns = COLUMNS + [c for c in REGION_COLUMNS if c in written.columns]
    written[columns].to_csv(targets[0], index=False)
    solution.to_csv(targets[1], index=False)
    return targets
