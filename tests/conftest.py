"""Shared fixtures: a few dozen real photos from ../shared/bench/nyala-lion, referenced in place."""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import uvicorn

os.environ.setdefault("HF_HUB_OFFLINE", "1")

BENCH = Path(__file__).resolve().parents[2] / "shared" / "bench" / "nyala-lion"


def pytest_configure(config):
    if not BENCH.is_dir():
        raise pytest.UsageError(f"{BENCH}: the shared benchmark must sit beside the repository")


@pytest.fixture(scope="session")
def bench_metadata() -> pd.DataFrame:
    return pd.read_csv(BENCH / "metadata.csv", dtype=str, keep_default_na=False)


@pytest.fixture(scope="session")
def real_subset(tmp_path_factory, bench_metadata) -> Path:
    """An AnimalCLEF folder of 36 real images (absolute paths into the shared benchmark):
    per species 4 known identities (3 database + 1 query images) and 2 unknown query images."""
    solution = pd.read_csv(BENCH / "solution.csv", dtype=str)
    folder = tmp_path_factory.mktemp("real-subset")
    rows, answers = [], []
    for species in ("nyala", "lion"):
        meta = bench_metadata[bench_metadata["species"] == species]
        database = meta[meta["split"] == "database"]
        counts = database.groupby("identity").size()
        queries = meta[meta["split"] == "query"].merge(solution, on="image_id",
                                                       suffixes=("", "_true"))
        queried = set(queries["identity_true"])
        known = sorted(i for i in counts[counts >= 3].index if i in queried)[:4]
        for identity in known:
            rows.append(database[database["identity"] == identity].head(3))
            query = queries[queries["identity_true"] == identity].head(1)
            rows.append(query.drop(columns="identity_true"))
            answers.append(query[["image_id", "identity_true"]])
        unknown = queries[~queries["identity_true"].isin(database["identity"])]
        first_two = unknown.drop_duplicates("identity_true").head(2)
        rows.append(first_two.drop(columns="identity_true"))
        answers.append(first_two[["image_id", "identity_true"]])
    metadata = pd.concat(rows, ignore_index=True)
    metadata["path"] = [str(BENCH / p) for p in metadata["path"]]
    metadata.to_csv(folder / "metadata.csv", index=False)
    truth = pd.concat(answers).rename(columns={"identity_true": "identity"})
    truth.to_csv(folder / "solution.csv", index=False)
    return folder


class LiveServer:
    """The review app on a free localhost port, in a thread, as ``wildreid serve`` runs it."""

    def __init__(self, folder, **options):
        from wildreid.app import create_app

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        config = uvicorn.Config(create_app(folder, **options), host="127.0.0.1", port=self.port,
                                log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started and time.time() < deadline:
            time.sleep(0.05)
        return f"http://127.0.0.1:{self.port}/"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)
