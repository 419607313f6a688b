"""Fault injection on the on-disk cache, end to end: damage every namespace of a warm cache (global
features, U²-Net-p regions, keypoints) in each way below, run the accurate pipeline on it, and check
that the run finishes with the answers (candidates and scores) of a run without any cache, that
each damage was reported by path, and that two processes sharing one cache both finish right.

    python benchmarks/cache_faults.py                       # SIFT keypoints: minutes on a CPU
    python benchmarks/cache_faults.py --local aliked --device cuda

Writes ``benchmarks/results/cache-faults-<local>-<device>-<date>.json`` (never overwritten).
``tests/test_cache.py`` runs the same damages on the feature cache alone.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.common import DEFAULT_BENCH, unused_path
from wildreid.cache import FILE_NAME, CacheDamaged
from wildreid.testing import KINDS, damage, write_subset


def _identify(data: Path, cache: Path | None, local: str, device: str) -> pd.DataFrame:
    from wildreid import Identifier, load_dataset
    from wildreid.rerank import LocalReranking

    dataset = load_dataset(data)
    identifier = Identifier(reranking=LocalReranking((local,), shortlist=None,
                                                     keypoints_on="animal"),
                            cache_dir=cache, device=device, progress=False).fit(dataset.database)
    return identifier.predict_candidates(dataset.query, k=3)


def _same(candidates: pd.DataFrame, reference: pd.DataFrame) -> bool:
    return (candidates["identity"].tolist() == reference["identity"].tolist()
            and np.allclose(candidates["score"], reference["score"], atol=1e-4))


_WORKER = """
import sys
sys.path.insert(0, sys.argv[1])
from benchmarks.cache_faults import _identify
from pathlib import Path
_identify(Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4], sys.argv[5]).to_csv(sys.argv[6])
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bench", type=Path, default=DEFAULT_BENCH)
    parser.add_argument("--local", default="sift", help="sift (CPU), aliked or disk")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--kinds", default=",".join(KINDS))
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="wildreid-cache-faults-"))
    data = write_subset(args.bench, scratch / "data")
    started = time.time()
    reference = _identify(data, None, args.local, args.device)
    print(f"reference (no cache): {len(reference)} candidates in {time.time() - started:.0f} s")
    warm = scratch / "warm"
    filled = _identify(data, warm, args.local, args.device)
    intact = _identify(data, warm, args.local, args.device)  # everything read back
    intact_same = _same(filled, reference) and _same(intact, reference)
    print(f"filling the cache and reading it back intact give the same answers: {intact_same}")
    namespaces = sorted(p.parent.name for p in warm.glob(f"*/{FILE_NAME}"))
    results = []
    for kind in args.kinds.split(","):
        cache = scratch / kind
        shutil.copytree(warm, cache)
        for namespace in namespaces:
            damage(cache / namespace, kind)
        started = time.time()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", CacheDamaged)
            candidates = _identify(data, cache, args.local, args.device)
        reported = [str(w.message) for w in caught if issubclass(w.category, CacheDamaged)]
        named = sorted({n for n in namespaces if any(n in message for message in reported)})
        row = {"damage": kind, "same_answers": _same(candidates, reference),
               "warnings": len(reported), "namespaces_reported": named,
               "seconds": round(time.time() - started, 1)}
        results.append(row)
        print(row, flush=True)
    shared = scratch / "shared"
    started = time.time()
    runs = [subprocess.Popen([sys.executable, "-c", _WORKER, str(Path(__file__).parents[1]),
                              str(data), str(shared), args.local, args.device,
                              str(scratch / f"shared-{i}.csv")]) for i in range(2)]
    codes = [run.wait() for run in runs]
    both = [pd.read_csv(scratch / f"shared-{i}.csv") for i in range(2) if codes[i] == 0]
    concurrent = {"exit_codes": codes, "same_answers": len(both) == 2 and all(
        _same(b, reference) for b in both), "seconds": round(time.time() - started, 1)}
    print("two processes sharing one empty cache:", concurrent)
    record = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
              "date": str(date.today()), "local": args.local, "device": args.device,
              "images": len(pd.read_csv(data / "metadata.csv")),
              "namespaces": namespaces, "intact_cache_same_answers": intact_same,
              "damages": results, "concurrent": concurrent,
              "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])}
    args.out.mkdir(parents=True, exist_ok=True)
    path = unused_path(args.out / f"cache-faults-{args.local}-{args.device}-{date.today()}.json")
    path.write_text(json.dumps(record, indent=2))
    print(f"wrote {path}")
    shutil.rmtree(scratch, ignore_errors=True)
    if not (intact_same and all(r["same_answers"] for r in results)
            and concurrent["same_answers"]):
        sys.exit(1)


if __name__ == "__main__":
    main()
