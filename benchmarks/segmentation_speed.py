"""U²-Net-p segmentation speed (ms/image) and guard rate on benchmark images.

    python benchmarks/segmentation_speed.py [--n 64] [--bench DIR] [--backend onnxruntime|torch]
        [--device cpu|cuda] [--batch-size 16]

Images are decoded first; only segmentation (resize, network, mask, component, box) is timed.
Prints one Markdown row and writes the JSON to benchmarks/results/.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import sys
import time
from pathlib import Path

from common import DEFAULT_BENCH, unused_path

from wildreid.images import load_image
from wildreid.isolation import Segmenter


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=64, help="images per species")
    parser.add_argument("--bench", type=Path, default=DEFAULT_BENCH)
    parser.add_argument("--weights", default=None)
    parser.add_argument("--backend", default="onnxruntime", help="onnxruntime | torch")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    segmenter = Segmenter(args.weights, backend=args.backend, device=args.device)
    if segmenter.device.type == "cuda":
        import torch

        engine = f"torch {torch.cuda.get_device_name(0)} fp16, batch {args.batch_size}"
    else:
        engine = f"{args.backend} CPU, {os.cpu_count()} cores"
    rows = {}
    for species in ("nyala", "lion"):
        files = sorted((args.bench / "images" / species).iterdir())
        images = [load_image(p) for p in random.Random(0).sample(files, args.n)]
        segmenter.regions(images[:args.batch_size], args.batch_size)  # warm-up
        start = time.perf_counter()
        regions = segmenter.regions(images, args.batch_size)
        seconds = time.perf_counter() - start
        rows[species] = {"ms_per_image": 1000 * seconds / len(images),
                         "guard_rate": sum(r.source == "guard" for r in regions) / len(regions)}
    date = datetime.date.today().isoformat()
    machine = f"{platform.machine()} {engine}"
    report = {"date": date, "machine": machine, "n": args.n, "species": rows,
              "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])}
    args.out.mkdir(parents=True, exist_ok=True)
    name = f"segmentation-{args.backend}-{segmenter.device.type}-{os.cpu_count()}cores-{date}.json"
    unused_path(args.out / name).write_text(json.dumps(report, indent=2))
    print(f"| {date} | {machine} | "
          + " | ".join(f"{s}: {v['ms_per_image']:.0f} ms/image, guard {100 * v['guard_rate']:.0f} %"
                       for s, v in rows.items()) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
