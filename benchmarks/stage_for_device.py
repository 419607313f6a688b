"""Split ../shared/bench/nyala-lion into chunks under .carry/ for the GPU machine.

The device tool carries at most 64 MiB a call, so the benchmark travels in parts that each call
copies into /tmp/bench/nyala-lion on the warm machine (see BENCHMARKS.md for the exact calls).

    python benchmarks/stage_for_device.py [--mib 45]
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from common import DEFAULT_BENCH as BENCH

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=float, default=45, help="size of each chunk")
    args = parser.parse_args()
    carry = ROOT / ".carry"
    shutil.rmtree(carry, ignore_errors=True)
    chunk, used = 0, 0
    target = carry / f"bench{chunk}"
    for csv in BENCH.glob("*.csv"):
        (target).mkdir(parents=True, exist_ok=True)
        shutil.copy(csv, target / csv.name)
    for image in sorted(BENCH.glob("images/*/*")):
        size = image.stat().st_size
        if used + size > args.mib * 2**20:
            chunk, used = chunk + 1, 0
            target = carry / f"bench{chunk}"
        destination = target / image.relative_to(BENCH)
        destination.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(image, destination)
        used += size
    print(f"{chunk + 1} chunks under {carry}")


if __name__ == "__main__":
    main()
