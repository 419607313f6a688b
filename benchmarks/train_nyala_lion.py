"""Fine-tune on a benchmark protocol's database, then score that protocol with the new model.

    python benchmarks/train_nyala_lion.py --protocol B [--device cuda] [--loss arcface]
        [--epochs 20] [--p 16] [--k 4] [--steps-per-epoch N] [--unfreeze N] [--local sift]
        [--bench DIR] [--out DIR]

Training reads only the database rows of the protocol's metadata (never queries or solutions);
the checkpoint is then evaluated exactly as ``nyala_lion.py --model CHECKPOINT`` would: alone and,
with ``--local``, fused with local matching over a ``--shortlist``. Writes
``train-<protocol>-<loss>-<device>-<date>.json`` (training history, time, scores) and the checkpoint
under ``results/checkpoints/`` (ignored by git).
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

from common import DEFAULT_BENCH, unused_path
from nyala_lion import build_parser, machine, markdown, run_protocol

from wildreid.data import load_dataset
from wildreid.features import resolve_device
from wildreid.heads import EmbeddingHead
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
    parser.add_argument("--cached-views", type=int, default=4)
    parser.add_argument("--lr-head", type=float, default=1e-3)
    parser.add_argument("--lr-backbone", type=float, default=1e-4)
    parser.add_argument("--patience", type=int, default=5)
    parser.add_argument("--head-activation", default=TrainConfig.head_activation,
                        choices=EmbeddingHead.ACTIVATIONS)
    parser.add_argument("--local", default="", help="also evaluate fused with these matchers")
    parser.add_argument("--shortlist", type=int, default=100)
    parser.add_argument("--max-keypoints", type=int, default=512)
    parser.add_argument("--mirror", default="none")
    parser.add_argument("--cache-dir", default=None, help="feature/region/keypoint cache "
                        "[default: a fresh temporary folder]")
    parser.add_argument("--tag", default="", help="added to the results file name")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--bench", type=Path, default=DEFAULT_BENCH)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    device = str(resolve_device(args.device))
    date = datetime.date.today().isoformat()
    metadata, solution = FILES[args.protocol]
    dataset = load_dataset(args.bench, metadata)
    config = TrainConfig(loss=args.loss, epochs=args.epochs, identities_per_batch=args.p,
                         images_per_identity=args.k, steps_per_epoch=args.steps_per_epoch,
                         unfreeze=args.unfreeze, cached_views=args.cached_views,
                         lr_head=args.lr_head, lr_backbone=args.lr_backbone,
                         patience=args.patience, head_activation=args.head_activation)
    tag = f"-{args.tag}" if args.tag else ""
    stem = f"train-{args.protocol}-{args.loss}{tag}-{device}-{date}"
    checkpoint = args.out / "checkpoints" / f"{stem}.pt"  # ignored by git
    started = time.perf_counter()
    trainer = Trainer(args.model, checkpoint, config, device=device, workers=args.workers,
                      cache_dir=args.cache_dir)
    history = trainer.fit(dataset.database, resume=False)
    train_seconds = time.perf_counter() - started
    rows = []
    for local in dict.fromkeys(["", args.local]):
        # nyala_lion.py's own defaults, so an option it gains never breaks this evaluation.
        evaluation = build_parser().parse_args([])
        evaluation.__dict__.update(
            model=str(checkpoint), device=device, bench=args.bench, local=local,
            shortlist=args.shortlist, max_keypoints=args.max_keypoints, keypoints_on="animal",
            mirror=args.mirror)
        row = run_protocol(args.protocol, metadata, solution, evaluation, "max", args.cache_dir)
        row["peak_rss_mib"] = float("nan")
        rows.append(row)
    report = {"date": date, "machine": machine(device), "command": " ".join(sys.argv),
              "config": asdict(config), "train_seconds": round(train_seconds, 1),
              "baseline": trainer.baseline, "history": history, "evaluation": rows[0], "fused": rows[1:]}
    args.out.mkdir(parents=True, exist_ok=True)
    unused_path(args.out / f"{stem}.json").write_text(  # never over an earlier result
        json.dumps(report, indent=2, default=lambda v: None))
    print(f"trained in {train_seconds:.0f} s; validation score {trainer.baseline['score']:.3f} "
          f"(top-1 {trainer.baseline['top1']:.3f}) at the start, best "
          f"{max(h['score'] for h in history):.3f} (top-1 {max(h['top1'] for h in history):.3f})")
    for row in rows:
        name = f"fine-tuned {args.model} ({args.loss})" + (f" + {row['local']}" if row["local"]
                                                            else "")
        print(markdown(row, name, report["machine"], date))
    return 0


if __name__ == "__main__":
    sys.exit(main())
