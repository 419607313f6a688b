"""Shared fixtures: a few dozen real photos from ../shared/bench/nyala-lion, referenced in place."""

from __future__ import annotations

import os

if os.environ.get("PYTEST_XDIST_WORKER"):
    # The suite runs as one worker per core (pytest-xdist, pyproject's addopts): one thread
    # each, set before torch or onnxruntime start, rather than every worker's threads fighting
    # over every core.
    for _variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(_variable, "1")
    import cv2  # its own thread pool too

    cv2.setNumThreads(1)
    # Workers start with COLUMNS=80 and LINES=24 set, which would freeze the CLI's consoles at
    # 80 columns when it is imported; the tests set the width they need per call.
    for _variable in ("COLUMNS", "LINES"):
        os.environ.pop(_variable, None)

import socket
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import uvicorn
from PIL import Image

from wildreid.testing import write_subset

os.environ.setdefault("HF_HUB_OFFLINE", "1")

BENCH = Path(__file__).resolve().parents[2] / "shared" / "bench" / "nyala-lion"


def pytest_terminal_summary(terminalreporter):
    """``pytest -m hostile`` (or any run holding hostile cases) ends with how many held."""
    reports = [r for key in ("passed", "failed", "error") for r in terminalreporter.stats.get(key, [])
               if getattr(r, "when", "") == "call" and "hostile" in getattr(r, "keywords", {})]
    if reports:
        held = sum(r.passed for r in reports)
        terminalreporter.write_line(f"hostile inputs: tried {len(reports)}, held {held}")


#: Fixtures that read the shared benchmark's real photos.
_BENCH_FIXTURES = {"real_subset", "bench_metadata", "bursts"}


def pytest_collection_modifyitems(config, items):
    """Tests on the shared benchmark's real photos are marked ``bench`` (those using its
    fixtures, and those of modules marked so); without ``../shared/bench`` they are skipped and
    the pure ones still run."""
    for item in items:
        if _BENCH_FIXTURES & set(getattr(item, "fixturenames", ())) and \
                item.get_closest_marker("bench") is None:
            item.add_marker(pytest.mark.bench)
        if not BENCH.is_dir() and item.get_closest_marker("bench") is not None:
            item.add_marker(pytest.mark.skip(reason=f"needs the shared benchmark at {BENCH}"))


@pytest.fixture(scope="session")
def bench_metadata() -> pd.DataFrame:
    return pd.read_csv(BENCH / "metadata.csv", dtype=str, keep_default_na=False)


@pytest.fixture(scope="session")
def real_subset(tmp_path_factory) -> Path:
    """An AnimalCLEF folder of 36 real images (absolute paths into the shared benchmark):
    per species 4 known identities (3 database + 1 query images) and 2 unknown query images."""
    return write_subset(BENCH, tmp_path_factory.mktemp("real-subset"))


@pytest.fixture(scope="session")
def _regions_of_real_subset(real_subset, tmp_path_factory) -> Path:
    """A cache holding the segmenter's regions of every photo of ``real_subset`` (U²-Net takes
    about half a second a photo on two cores: computed once per session, not once per test)."""
    from filelock import FileLock

    from wildreid.data import load_dataset
    from wildreid.isolation import Isolator, Segmenter

    # One folder for the whole run, its parallel workers included: the first worker to need it
    # computes it, the others wait for it (the cache is keyed by the photos' content, so every
    # worker's copy of the subset finds it).
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent
    folder = shared / "regions-cache"
    with FileLock(str(shared / "regions-cache.lock")):
        if not (shared / "regions-cache.done").exists():
            folder.mkdir(exist_ok=True)
            Isolator(lambda: Segmenter(device="cpu"), cache_dir=folder, progress=False)(
                load_dataset(real_subset).metadata, "regions")
            (shared / "regions-cache.done").touch()
    return folder


@pytest.fixture()
def regions_cache(_regions_of_real_subset, tmp_path) -> Path:
    """A cache folder of the test's own, holding the regions of ``real_subset``'s photos already:
    for the tests whose subject is not segmentation (tests/test_isolation.py covers it) but
    whose pipeline places keypoints on the animal."""
    import shutil

    return Path(shutil.copytree(_regions_of_real_subset, tmp_path / "cache"))


@pytest.fixture(scope="session")
def bursts(tmp_path_factory):
    """An AnimalCLEF folder: the real photos of 30 lions (4 each) as the database, and as queries
    three lions absent from it, each seen in a burst of 4 frames (one real photo, the animal
    shifted and zoomed from frame to frame, as camera traps shoot)."""
    folder = tmp_path_factory.mktemp("bursts")
    metadata = pd.read_csv(BENCH / "metadata.csv", dtype=str)
    truth = pd.read_csv(BENCH / "solution.csv", dtype=str).set_index("image_id")["identity"]
    lion = metadata[metadata["species"] == "lion"]
    database = lion[lion["split"] == "database"]
    counts = database.groupby("identity").size()
    chosen = sorted(counts[counts >= 4].index)[:30]
    database = database[database["identity"].isin(chosen)].groupby("identity").head(4).copy()
    database["path"] = [str(BENCH / p) for p in database["path"]]
    queries = lion[lion["split"] == "query"].copy()
    queries["truth"] = queries["image_id"].map(truth)
    unseen = queries[~queries["truth"].isin(set(lion["identity"].dropna()))]
    rows, answers = [], []
    for name in sorted(unseen["truth"].unique())[:3]:
        photo = Image.open(BENCH / unseen.loc[unseen["truth"] == name, "path"].iloc[0])
        photo = photo.convert("RGB")
        width, height = photo.size
        for frame, (dx, dy, zoom) in enumerate([(0, 0, 1.0), (.04, .02, .95), (.02, .05, .9),
                                                (.06, 0, .92)]):
            box = (int(dx * width), int(dy * height), int(dx * width + zoom * width * (1 - dx)),
                   int(dy * height + zoom * height * (1 - dy)))
            image_id = f"burst-{name}-{frame}"
            photo.crop(box).save(folder / f"{image_id}.jpg", quality=88)
            rows.append({"image_id": image_id, "path": f"{image_id}.jpg", "species": "lion",
                         "split": "query"})
            answers.append({"image_id": image_id, "identity": name})
    pd.concat([database, pd.DataFrame(rows)]).to_csv(folder / "metadata.csv", index=False)
    pd.DataFrame(answers).to_csv(folder / "solution.csv", index=False)
    return folder


class LiveServer:
    """The review app on a free localhost port, in a thread, as ``wildreid serve`` runs it. The
    socket is bound here and handed to the server, so no other process can take the port
    between choosing and binding it; a server that fails to start fails the test."""

    def __init__(self, folder, **options):
        from wildreid.app import create_app

        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.port = self.socket.getsockname()[1]
        config = uvicorn.Config(create_app(folder, **options), log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.socket]},
                                       daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        while not self.server.started:  # the server's own signal, however loaded the machine
            if not self.thread.is_alive():
                raise RuntimeError(f"the review app did not start on port {self.port}")
            time.sleep(0.05)
        return f"http://127.0.0.1:{self.port}/"

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join()
        self.socket.close()


def settings_file(folder: Path, **values) -> list[str]:
    """``--settings FILE`` for ``identify``: ``values`` (Python names) written as a TOML file in
    ``folder``; those of the local re-ranking in its ``[reranking]`` table."""
    import json

    from wildreid.settings import reranking_settings

    local = {setting.key for setting in reranking_settings()}
    tables: dict[bool, list[str]] = {False: [], True: []}
    for key, value in values.items():
        if isinstance(value, bool):
            text = str(value).lower()
        elif isinstance(value, int):
            text = str(value)
        else:
            text = json.dumps(str(value))  # a TOML basic string is a JSON string
        tables[key in local].append(f"{key.replace('_', '-')} = {text}")
    path = Path(folder) / "settings.toml"
    path.write_text("\n".join([*tables[False], "[reranking]", *tables[True]]) + "\n")
    return ["--settings", str(path)]
