"""How long a reviewer waits in the review app, on a catalog of real photos (nyala-lion).

    python benchmarks/review_waiting.py --photos 1000 --waiting 100

Builds a catalog of ``photos`` photos from ../shared's protocol A (identified database photos, and
``waiting`` of its queries waiting for review) as ``wildreid catalog add`` does (importing, then
ranking the waiting photos ahead), opens the app as ``wildreid serve`` does (in process, through
FastAPI's client) and times what a reviewer waits for:

- ``import_seconds`` and ``rank_at_add_seconds``: ``catalog add``'s two steps (the ranking fits
  the catalog's model; nobody waits on it in the app);
- ``first_candidates_seconds``: from opening the app (a new process: nothing in memory) to the
  first waiting photo's candidates on the page (the target: 2 s);
- ``rank_ahead_seconds``: the app's background pass over the waiting photos at start (nothing
  left to rank after ``catalog add``);
- ``match_view_seconds``: the drawn local matches of its best candidate (target: 1 s once
  computed; the first drawing computes the keypoints of both photos);
- ``decision_seconds``: confirming it, then the next photo's candidates; and
  ``rank_again_seconds``: the background ranking of the rest after that decision.

Writes ``benchmarks/results/review-waiting-<photos>-<waiting>-cpu-<date>.json`` (never
overwritten).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import pandas as pd
from common import DEFAULT_BENCH, cpu_name, unused_path
from fastapi.testclient import TestClient

from wildreid.app import create_app
from wildreid.catalog import Catalog

RESULTS = Path(__file__).resolve().parent / "results"


def timed(work) -> tuple[float, object]:
    started = time.perf_counter()
    result = work()
    return round(time.perf_counter() - started, 3), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--photos", type=int, default=1000)
    parser.add_argument("--waiting", type=int, default=100)
    parser.add_argument("--preset", default="fast", help="the catalog's preset (fast, accurate)")
    parser.add_argument("--bench", type=Path, default=DEFAULT_BENCH)
    arguments = parser.parse_args()
    metadata = pd.read_csv(arguments.bench / "metadata.csv", dtype=str, keep_default_na=False)
    queries = metadata[metadata["split"] == "query"].sample(arguments.waiting, random_state=0)
    database = metadata[metadata["split"] == "database"].sample(
        arguments.photos - arguments.waiting, random_state=0)
    with tempfile.TemporaryDirectory(prefix="review-waiting-") as scratch:
        folder = Path(scratch) / "catalog"
        chosen = pd.concat([database, queries])
        chosen = chosen.assign(path=[str(arguments.bench / p) for p in chosen["path"]])
        (Path(scratch) / "data").mkdir()
        chosen.to_csv(Path(scratch) / "data" / "metadata.csv", index=False)
        import_seconds, imported = timed(
            lambda: Catalog.create(folder, arguments.preset).add_dataset(Path(scratch) / "data"))
        rank_at_add, _ = timed(lambda: Catalog(folder).rank_waiting())

        def open_app():
            app = create_app(folder)
            http = TestClient(app, base_url="http://127.0.0.1")
            waiting = http.get("/api/queries").json()["queries"]  # what the page asks first
            return app, http, waiting, http.get("/api/candidates",
                                                params={"image_id": waiting[0]}).json()

        first_candidates, (app, http, waiting, shown) = timed(open_app)
        rank_ahead, _ = timed(app.state.rank_ahead.settle)
        first = waiting[0]
        best = shown["candidates"][0]
        match_first, _ = timed(lambda: http.get("/api/matches", params={
            "image_id": first, "individual": best["identity"], "photo": best["image"]}))
        match_again, _ = timed(lambda: http.get("/api/matches", params={
            "image_id": first, "individual": best["identity"], "photo": best["image"]}))

        def decide():
            http.post("/api/confirm", data={"image_id": first, "individual": best["identity"]})
            return http.get("/api/candidates", params={"image_id": waiting[1]}).json()

        decision, _ = timed(decide)
        rank_again, _ = timed(app.state.rank_ahead.settle)
    record = {"benchmark": "review-waiting", "date": time.strftime("%Y-%m-%d"),
              "machine": f"{cpu_name()}, {len(__import__('os').sched_getaffinity(0))} cores",
              "command": f"python benchmarks/review_waiting.py --photos {arguments.photos} "
                         f"--waiting {arguments.waiting}" + (
                             "" if arguments.preset == "fast" else f" --preset {arguments.preset}"),
              "preset": arguments.preset,
              "photos": arguments.photos, "waiting": len(waiting),
              "identified": imported.added, "import_seconds": import_seconds,
              "rank_at_add_seconds": rank_at_add, "rank_ahead_seconds": rank_ahead,
              "first_candidates_seconds": first_candidates,
              "match_view_seconds": match_first, "match_view_again_seconds": match_again,
              "decision_seconds": decision, "rank_again_seconds": rank_again}
    preset = "" if arguments.preset == "fast" else f"-{arguments.preset}"
    path = unused_path(RESULTS / f"review-waiting{preset}-{arguments.photos}-"
                                 f"{arguments.waiting}-cpu-{record['date']}.json")
    path.write_text(json.dumps(record, indent=1))
    print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
