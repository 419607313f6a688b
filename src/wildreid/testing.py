"""Real inputs for tests and benchmarks: small AnimalCLEF folders cut from a benchmark of real
photos (referenced in place, never copied), and cache files damaged in every way a disk or a
careless user can (:func:`damage`). Shared by ``tests/`` and ``benchmarks/``, so neither imports
the other."""

from __future__ import annotations

import os
import sqlite3
from contextlib import closing
from pathlib import Path

import numpy as np
import pandas as pd

from wildreid.cache import FILE_NAME, _checksum


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


#: Each way a cache file is damaged: the file cut, emptied or overwritten; a row's bytes flipped,
#: two rows' arrays swapped, a well-formed row of another width; and the same for shards of the
#: older npz format (imported on open).
KINDS = ["truncated", "emptied", "random-bytes", "flipped-bytes", "swapped-rows", "wrong-width",
         "npz-truncated", "npz-emptied", "npz-random-bytes", "npz-wrong-width"]


def _sql(path: Path, *statements: tuple) -> None:
    with closing(sqlite3.connect(path)) as connection, connection:
        for statement in statements:
            connection.execute(*statement)


def damage(folder: Path, kind: str, seed: int = 0) -> None:
    """Damage the cache namespace in ``folder`` (holding at least 4 rows) as ``kind`` says."""
    database = folder / FILE_NAME
    with closing(sqlite3.connect(database)) as connection:
        rows = connection.execute("SELECT key, dtype, shape, value FROM arrays ORDER BY key"
                                  ).fetchall()
    size = database.stat().st_size
    if kind == "truncated":
        with open(database, "r+b") as handle:
            handle.truncate(size // 2)
    elif kind == "emptied":
        database.write_bytes(b"")
    elif kind == "random-bytes":
        database.write_bytes(np.random.default_rng(seed).bytes(size))
    elif kind == "flipped-bytes":  # bit rot inside one row's array
        value = bytearray(rows[0][3])
        value[len(value) // 2] ^= 0xFF
        _sql(database, ("UPDATE arrays SET value = ? WHERE key = ?", (bytes(value), rows[0][0])))
    elif kind == "swapped-rows":  # valid format, each array under the other's key
        (a, _, _, first), (b, _, _, second) = rows[:2]
        _sql(database, ("UPDATE arrays SET value = ? WHERE key = ?", (second, a)),
             ("UPDATE arrays SET value = ? WHERE key = ?", (first, b)))
    elif kind == "wrong-width":  # a well-formed row of another width, checksum and all
        key, dtype, shape = rows[0][:3]
        narrow = str(max(1, int(shape.split(",")[0]) // 2))
        value = np.zeros(int(narrow), np.dtype(dtype)).tobytes()
        _sql(database, ("UPDATE arrays SET shape = ?, value = ?, checksum = ? WHERE key = ?",
                        (narrow, value, _checksum(key, dtype, narrow, value), key)))
    elif kind.startswith("npz-"):  # shards of the older format
        database.unlink()
        for leftover in folder.glob(FILE_NAME + "-*"):
            leftover.unlink()
        keys = np.asarray([r[0] for r in rows])
        values = np.stack([np.frombuffer(r[3], np.dtype(r[1])) for r in rows])
        half = len(keys) // 2 + 1  # the intact shard holds the most rows
        np.savez(folder / "good.npz", keys=keys[:half], values=values[:half])
        shard = folder / "bad.npz"
        if kind == "npz-wrong-width":
            np.savez(shard, keys=keys[half:], values=values[half:, : values.shape[1] // 2])
        else:
            np.savez(shard, keys=keys[half:], values=values[half:])
            data = shard.read_bytes()
            shard.write_bytes({"npz-truncated": data[: len(data) // 2], "npz-emptied": b"",
                               "npz-random-bytes": os.urandom(len(data))}[kind])
    else:
        raise ValueError(f"unknown damage {kind!r}; use one of {', '.join(KINDS)}")
