"""Fine-tune on a benchmark protocol's database, then score that protocol with the new model.

    python benchmarks/train_nyala_lion.py --protocol B [--device cuda] [--loss arcface]
        [--epochs 20] [--p 16] [--k 4] [--steps-per-epoch N] [--bench DIR] [--out DIR]

Training reads only the database rows of the protocol's metadata (never queries or solutions);
the checkpoint is then evaluated exactly as ``nyala_lion.py --model CHECKPOINT`` would. Writes
``train-<protocol>-<loss>-<device>-<date>.json`` (training history, time, scores) and the checkpoint
beside it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch
from common import DEFAULT_BENCH
from nyala_lion import machine, markdown, run_protocol

from wildreid.data import load_dataset
from wildreid.train import TrainConfig, Trainer

FILES = {"A": ("metadata.csv", "solution.csv"),
         "B": ("closedset_metadata.csv", "closedset_solution.csv")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--protocol", default="B", choices=sorted(FILES))
    parser.add_argument("--model", default="efficientnet-lite0")
    parser.add_argument("--loss", default="arcface")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--p", type=int, default=16)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--steps-per-epoch", type=int, default=None)
    parser.add_argument("--unfreeze", type=int, default=-1)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--bench", type=Path, default=DEFAULT_BENCH)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else args.device
    device = "cpu" if device == "auto" else device
    date = datetime.date.today().isoformat()
    metadata, solution = FILES[args.protocol]
    dataset = load_dataset(args.bench, metadata)
    config = TrainConfig(loss=args.loss, epochs=args.epochs, identities_per_batch=args.p,
                         images_per_identity=args.k, steps_per_epoch=args.steps_per_epoch,
                         unfreeze=args.unfreeze)
    stem = f"train-{args.protocol}-{args.loss}-{device}-{date}"
    checkpoint = args.out / "checkpoints" / f"{stem}.pt"  # ignored by git
    started = time.perf_counter()
    history = Trainer(args.model, checkpoint, config, device=device, workers=args.workers).fit(
        dataset.database, resume=False)
    train_seconds = time.perf_counter() - started
    evaluation = argparse.Namespace(model=str(checkpoint), device=device, batch_size=64,
                                    bench=args.bench, segmenter_weights=None, local="",
                                    shortlist=100, max_keypoints=512, keypoints_on="animal",
                                    dump_pairs=False)
    row = run_protocol(args.protocol, metadata, solution, evaluation, "max", None)
    row["peak_rss_mib"] = float("nan")
    report = {"date": date, "machine": machine(device), "command": " ".join(sys.argv),
              "config": asdict(config), "train_seconds": round(train_seconds, 1),
              "history": history, "evaluation": row}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2, default=lambda v: None))
    print(f"trained in {train_seconds:.0f} s; best validation "
          f"{max(h['score'] for h in history):.3f}")
    print(markdown(row, f"fine-tuned {args.model} ({args.loss})", report["machine"], date))
    return 0


if __name__ == "__main__":
    sys.exit(main())
