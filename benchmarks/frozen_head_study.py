"""Which loss trains the best head on a frozen backbone, and do the last stages gain from
training too? Measured by the database validation.

    python benchmarks/frozen_head_study.py [--protocol B] [--losses arcface,classifier,...]
        [--head-activations none,relu] [--seeds 0,1,2] [--unfreeze 0,1,2]

Backbone features of the protocol's database (``--cached-views`` views per image) are computed
once and shared by every run (``--cache-dir``); each loss then trains only the 512-d head, in
seconds per epoch on a CPU. With ``--unfreeze N`` the output of every stage but the last N is
cached instead (``wildreid.train.frozen_split``) and those N stages train with the head.
Reports the starting model's validation (ImageNet features) and each run's best epoch; writes
``frozen-head-<protocol>[-unfreeze-...][-views-V]-<device>-<date>.json``. Queries and solutions are never
read.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import sys
import time
from pathlib import Path

from common import DEFAULT_BENCH, unused_path
from nyala_lion import machine
from train_nyala_lion import FILES

from wildreid.data import load_dataset
from wildreid.features import resolve_device
from wildreid.train import TrainConfig, Trainer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--protocol", default="B", choices=sorted(FILES))
    parser.add_argument("--model", default="efficientnet-lite0")
    parser.add_argument("--losses", default="arcface,subcenter-arcface,triplet-hard,"
                        "triplet-semihard,classifier")
    parser.add_argument("--head-activations", default="none",
                        help="comma-separated: none, relu (after the head's batch norm); each "
                        "is trained with each loss")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds; a seed also picks "
                        "the validation split, so each run keeps its own baseline")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--lr-head", type=float, default=1e-3)
    parser.add_argument("--lr-backbone", type=float, default=1e-4)
    parser.add_argument("--unfreeze", default="0", help="comma-separated: last N backbone "
                        "stages trained with the head (0: the head alone)")
    parser.add_argument("--cached-views", type=int, default=4)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--bench", type=Path, default=DEFAULT_BENCH)
    parser.add_argument("--cache-dir", type=Path,
                        default=Path(__file__).parent / "results" / "checkpoints")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    device = str(resolve_device(args.device))
    date = datetime.date.today().isoformat()
    database = load_dataset(args.bench, FILES[args.protocol][0]).database
    runs, baseline = {}, None
    for loss in args.losses.split(","):
        for activation, seed, unfreeze in itertools.product(
                args.head_activations.split(","), map(int, args.seeds.split(",")),
                map(int, args.unfreeze.split(","))):
            name = (loss if activation == "relu" else f"{loss}/head-{activation}") + (
                f"/seed-{seed}" if seed else "") + (f"/unfreeze-{unfreeze}" if unfreeze else "")
            config = TrainConfig(loss=loss, epochs=args.epochs, unfreeze=unfreeze,
                                 lr_head=args.lr_head, lr_backbone=args.lr_backbone,
                                 cached_views=args.cached_views, patience=args.epochs,
                                 head_activation=activation, seed=seed)
            started = time.perf_counter()
            trainer = Trainer(args.model, args.cache_dir / f"frozen-{args.protocol}-{loss}-{seed}-"
                              f"{activation}-{unfreeze}.pt", config, device=device,
                              progress=False, cache_dir=args.cache_dir)
            history = trainer.fit(database, resume=False)
            baseline = trainer.baseline
            best = max(history, key=lambda row: row["score"] + 1e-3 * row["top1"])
            runs[name] = {"seconds": round(time.perf_counter() - started, 1), "best": best,
                          "head_activation": activation, "seed": seed, "unfreeze": unfreeze,
                          "baseline": trainer.baseline,
                          "best_top1": max(row["top1"] for row in history), "history": history}
            print(f"{name:<28} best epoch {best['epoch']:>2}: validation score "
                  f"{best['score']:.3f}, top-1 {best['top1']:.3f} (best top-1 of any epoch "
                  f"{runs[name]['best_top1']:.3f}); {runs[name]['seconds']:.0f} s", flush=True)
    print(f"starting model: validation score {baseline['score']:.3f}, top-1 {baseline['top1']:.3f}")
    args.out.mkdir(parents=True, exist_ok=True)
    tag = "" if args.head_activations == "relu" else f"-head-{args.head_activations.replace(',', '-')}"
    tag += "" if args.seeds == "0" else f"-seeds-{args.seeds.replace(',', '-')}"
    tag += "" if args.unfreeze == "0" else f"-unfreeze-{args.unfreeze.replace(',', '-')}"
    tag += "" if args.cached_views == 4 else f"-views-{args.cached_views}"
    path = unused_path(args.out / f"frozen-head-{args.protocol}{tag}-{device}-{date}.json")
    path.write_text(json.dumps({"date": date, "machine": machine(device),
                                "command": " ".join(sys.argv), "baseline": baseline,
                                "runs": runs}, indent=2, default=lambda v: None))
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
