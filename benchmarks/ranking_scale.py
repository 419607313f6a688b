"""Identity ranking at scale: a 100k-image database searched without the full similarity matrix.

    python benchmarks/ranking_scale.py [--database 100000] [--queries 2000] [--dim 1280]

Random unit embeddings (ranking cost does not depend on their content); reports search time and
the peak memory the search adds beyond the embeddings themselves (tracemalloc of numpy buffers).
"""

from __future__ import annotations

import argparse
import datetime
import time
import tracemalloc

import numpy as np

from wildreid.ranking import IdentityIndex


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=2_000)
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--identities", type=int, default=10_000)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    database = rng.standard_normal((args.database, args.dim), dtype=np.float32)
    database /= np.linalg.norm(database, axis=1, keepdims=True)
    queries = rng.standard_normal((args.queries, args.dim), dtype=np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    identities = rng.integers(0, args.identities, args.database).astype(str)
    index = IdentityIndex(database, identities)
    tracemalloc.start()
    start = time.perf_counter()
    index.search(queries, k=5)
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    full = args.database * args.queries * 4 / 2**20
    print(f"| {datetime.date.today()} | {args.database:,} x {args.queries:,} (dim {args.dim}, "
          f"{args.identities:,} identities) | {seconds:.1f} s | {peak:.0f} MiB peak during search "
          f"(full matrix would be {full:,.0f} MiB) |")


if __name__ == "__main__":
    main()
