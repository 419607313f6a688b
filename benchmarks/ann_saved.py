"""The approximate index kept beside the cache: what a catalogue pays to index once, to read the
index back on the next run, and to extend it when photos are appended, against building it again.

    python benchmarks/ann_saved.py --sizes 300000 1000000 --grow 0.02 --dim 384

For each size, on the synthetic clustered embeddings of ``ann_shortlist.py``: build and save
(``wildreid.ann.load_or_build`` into an empty folder), read back (the same rows: content key,
then the file), extend (``--grow`` more rows appended: the saved cells reused), the file's size,
and recall@100 against exact search of the extended index and of one built from scratch on the
grown rows, for queries near old and near appended rows. Writes
``benchmarks/results/ann-saved-d<dim>-cpu-<date>.json`` (never overwritten).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.ann_shortlist import clustered
from benchmarks.common import write_cpu_result
from wildreid import ranking
from wildreid.ann import load_or_build


def _timed(function, *args):
    started = time.perf_counter()
    result = function(*args)
    return result, time.perf_counter() - started


def _recall(index, queries: np.ndarray, exact: np.ndarray, depth: int) -> float:
    found, _ = index.search(queries, depth)
    return float(np.mean([len(set(f) & set(e)) / depth for f, e in zip(found, exact)]))


def measure(count: int, grow: float, dim: int, queries: int, depth: int) -> dict:
    added = round(grow * count)
    grown, asked = clustered(count + added, dim, queries)
    # Half the queries near the appended photos: the new rows must be found as well as the old.
    rng = np.random.default_rng(1)
    near = grown[count:][rng.integers(0, added, queries // 2)]
    near = near + 0.5 / np.sqrt(dim) * rng.standard_normal(near.shape, dtype=np.float32)
    asked[: queries // 2] = near / np.linalg.norm(near, axis=1, keepdims=True)
    exact, _ = ranking.nearest_images(grown, None, asked, None, depth)
    with tempfile.TemporaryDirectory() as folder:
        (_, how_built), build_s = _timed(load_or_build, grown[:count], folder)
        saved = next(Path(folder).glob("ivf-*.faiss"))
        file_mib = saved.stat().st_size / 2**20
        (_, how_read), read_s = _timed(load_or_build, grown[:count], folder)
        (extended, how_grown), extend_s = _timed(load_or_build, grown, folder)
        extended_recall = _recall(extended, asked, exact, depth)
    (rebuilt, _), rebuild_s = _timed(load_or_build, grown, None)
    assert (how_built, how_read, how_grown) == ("built", "loaded", "extended")
    return {"images": count, "appended": added, "build_and_save_s": round(build_s, 2),
            "file_mib": round(file_mib), "read_back_s": round(read_s, 2),
            "extend_and_save_s": round(extend_s, 2), "build_grown_from_scratch_s":
            round(rebuild_s, 2), "recall_at_depth_extended": round(extended_recall, 4),
            "recall_at_depth_rebuilt": round(_recall(rebuilt, asked, exact, depth), 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[300_000, 1_000_000])
    parser.add_argument("--grow", type=float, default=0.02, help="share of rows appended")
    parser.add_argument("--dim", type=int, default=384, help="384: DINOv2 ViT-S/14's width")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--depth", type=int, default=100)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    results = []
    for count in args.sizes:
        result = measure(count, args.grow, args.dim, args.queries, args.depth)
        print(json.dumps(result), flush=True)
        results.append(result)
    write_cpu_result(args.out, f"ann-saved-d{args.dim}",
                     {"dim": args.dim, "queries": args.queries, "depth": args.depth}, results)


if __name__ == "__main__":
    main()
