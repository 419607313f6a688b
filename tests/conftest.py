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

from benchmarks.common import write_subset

os.environ.setdefault("HF_HUB_OFFLINE", "1")

BENCH = Path(__file__).resolve().parents[2] / "shared" / "bench" / "nyala-lion"


def pytest_configure(config):
    if not BENCH.is_dir():
        raise pytest.UsageError(f"{BENCH}: the shared benchmark must sit beside the repository")


@pytest.fixture(scope="session")
def bench_metadata() -> pd.DataFrame:
    return pd.read_csv(BENCH / "metadata.csv", dtype=str, keep_default_na=False)


@pytest.fixture(scope="session")
def real_subset(tmp_path_factory) -> Path:
    """An AnimalCLEF folder of 36 real images (absolute paths into the shared benchmark):
    per species 4 known identities (3 database + 1 query images) and 2 unknown query images."""
    return write_subset(BENCH, tmp_path_factory.mktemp("real-subset"))


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
