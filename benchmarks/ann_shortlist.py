"""The shortlist at up to a million database images: exact (numpy, chunked; what wildreid uses
below ``wildreid.ann.APPROXIMATE_ABOVE``) against the approximate faiss IVF index, on synthetic
clustered embeddings (identities as directions, their images spread around them).

    python benchmarks/ann_shortlist.py --sizes 10000 100000 1000000 --dim 384

For each size: exact and approximate latency per query, recall@100 of the approximate shortlist
against the exact one, the index's build time and memory, and the number of queries after which
the index's build time is paid back. Writes
``benchmarks/results/ann-shortlist-d<dim>-cpu-<date>.json`` (never overwritten).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import write_cpu_result
from wildreid import ranking
from wildreid.ann import DEFAULT_PROBES, ImageIndex


def _rss_mib() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def clustered(count: int, dim: int, queries: int, seed: int = 0):
    """``count`` database rows of ``count // 4`` identities and ``queries`` query rows, with the
    structure of a descriptor's space: groups of look-alike identities (a pose, a background, a
    population: about 1,000 images each), identities around their group's direction, images
    around their identity's (cosine about 0.8 to it)."""
    rng = np.random.default_rng(seed)

    def around(centres: np.ndarray, rows: np.ndarray, relative: float) -> np.ndarray:
        block = centres[rows] + relative / np.sqrt(dim) * rng.standard_normal(
            (len(rows), dim), dtype=np.float32)
        return block / np.linalg.norm(block, axis=1, keepdims=True)

    groups = around(np.zeros((1, dim), np.float32) + 1e-9, np.zeros(max(1, count // 1000), int),
                    1.0)
    identities = around(groups, rng.integers(0, len(groups), max(1, count // 4)), 1.0)
    database = np.empty((count, dim), np.float32)
    for start in range(0, count, 100_000):  # in blocks: bounded temporary memory
        stop = min(count, start + 100_000)
        database[start:stop] = around(identities, rng.integers(0, len(identities), stop - start),
                                      0.75)
    return database, around(identities, rng.integers(0, len(identities), queries), 0.75)


def measure(count: int, dim: int, queries: int, depth: int, probes: list[int]) -> dict:
    database, asked = clustered(count, dim, queries)
    started = time.perf_counter()
    exact, _ = ranking.nearest_images(database, None, asked, None, depth)  # below the switch
    exact_ms = (time.perf_counter() - started) * 1000 / queries
    before = _rss_mib()
    started = time.perf_counter()
    index = ImageIndex(database)
    build_s = time.perf_counter() - started
    memory = _rss_mib() - before
    rows = []
    for probe in probes:
        index.probes = probe
        started = time.perf_counter()
        found, _ = index.search(asked, depth)
        approximate_ms = (time.perf_counter() - started) * 1000 / queries
        recall = float(np.mean([len(set(f) & set(e)) / depth for f, e in zip(found, exact)]))
        saved = exact_ms - approximate_ms
        rows.append({"probes": probe, "approximate_ms_per_query": round(approximate_ms, 3),
                     "recall_at_depth": round(recall, 4),
                     "queries_to_pay_back_build": None if saved <= 0 else
                     int(np.ceil(build_s * 1000 / saved))})
    return {"images": count, "lists": index.lists, "exact_ms_per_query": round(exact_ms, 3),
            "build_s": round(build_s, 1), "index_memory_mib": round(memory), "probes": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=384, help="384: DINOv2 ViT-S/14's width")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--depth", type=int, default=100, help="shortlist length (recall@depth)")
    parser.add_argument("--probes", type=int, nargs="+", default=[16, 32, DEFAULT_PROBES, 96])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    results = []
    for count in args.sizes:
        result = measure(count, args.dim, args.queries, args.depth, args.probes)
        print(json.dumps(result), flush=True)
        results.append(result)
    write_cpu_result(args.out, f"ann-shortlist-d{args.dim}",
                     {"dim": args.dim, "queries": args.queries, "depth": args.depth}, results)


if __name__ == "__main__":
    main()
