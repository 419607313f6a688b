"""Fine-tuning on real benchmark photos, on the CPU: a handful of images, short epochs."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from wildreid.cli import app
from wildreid.data import load_dataset
from wildreid.models import WithHead, create_descriptor
from wildreid.train import LOSSES, TrainConfig, Trainer, _loss, _loss_value, validation_split

SMALL = {"identities_per_batch": 4, "images_per_identity": 2, "steps_per_epoch": 3,
         "unfreeze": 1, "augment": False}


def test_loss_goes_down_and_the_checkpoint_is_a_model(real_subset, tmp_path):
    database = load_dataset(real_subset).database
    out = tmp_path / "model.pt"
    history = Trainer("efficientnet-lite0", out, TrainConfig(loss="arcface", epochs=3, **SMALL),
                      device="cpu", workers=0, progress=False).fit(database)
    assert len(history) == 3
    assert history[-1]["loss"] < history[0]["loss"]
    assert {"score", "top1", "baks", "baus", "images_per_s"} <= set(history[0])
    descriptor = create_descriptor(str(out))
    assert isinstance(descriptor.model, WithHead)
    with torch.inference_mode():
        embedding = descriptor.model.eval()(torch.zeros(1, 3, *descriptor.input_size))
    assert embedding.shape == (1, 512)
    runner = CliRunner()
    result = runner.invoke(app, ["identify", str(real_subset), "--model", str(out), "--device",
                                 "cpu", "--no-cache", "--output", str(tmp_path / "sub.csv")])
    assert result.exit_code == 0, result.output
    assert len(pd.read_csv(tmp_path / "sub.csv")) == len(load_dataset(real_subset).query)


def test_training_resumes_after_the_last_finished_epoch(real_subset, tmp_path):
    database = load_dataset(real_subset).database
    out = tmp_path / "model.pt"
    first = Trainer("efficientnet-lite0", out, TrainConfig(loss="triplet-hard", epochs=1, **SMALL),
                    device="cpu", workers=0, progress=False).fit(database)
    resumed = Trainer("efficientnet-lite0", out, TrainConfig(loss="triplet-hard", epochs=2, **SMALL),
                      device="cpu", workers=0, progress=False)
    history = resumed.fit(database)
    assert [row["epoch"] for row in history] == [1, 2]
    assert history[0] == first[0]  # epoch 1 was not run again


def test_training_on_animal_crops(real_subset, tmp_path):
    database = load_dataset(real_subset).database
    trainer = Trainer("efficientnet-lite0", tmp_path / "crop.pt",
                      TrainConfig(loss="triplet-hard", epochs=1, isolation="crop", **SMALL),
                      device="cpu", workers=0, progress=False, cache_dir=tmp_path / "cache")
    history = trainer.fit(database)
    assert len(history) == 1 and (tmp_path / "crop.pt").is_file()
    assert sum(r.source == "segmenter" for r in trainer._regions) >= len(database) // 2


def test_validation_split_is_identity_disjoint_for_unknowns():
    identities = np.repeat([f"id{i}" for i in range(10)], [1, 2, 3, 4, 5, 1, 2, 3, 4, 5])
    train, queries, unknown = validation_split(identities, 0.2, seed=0)
    assert len(set(train) | set(queries)) == len(identities) and not set(train) & set(queries)
    unknown_names = set(identities[queries[unknown]])
    assert len(unknown_names) == 2 and not unknown_names & set(identities[train])
    assert set(identities[queries[~unknown]]) <= set(identities[train])


def test_train_command_uses_only_the_database(real_subset, tmp_path):
    out = tmp_path / "cli.pt"
    result = CliRunner().invoke(app, [
        "train", str(real_subset), "--out", str(out), "--loss", "classifier", "--epochs", "1",
        "--p", "4", "--k", "2", "--steps-per-epoch", "2", "--unfreeze", "0", "--device", "cpu",
        "--workers", "0"])
    assert result.exit_code == 0, result.output
    assert out.is_file() and "validation score" in result.output
    bad = CliRunner().invoke(app, ["train", str(real_subset), "--loss", "contrastive"])
    assert bad.exit_code == 2 and "arcface" in bad.output


def test_frozen_backbone_trains_the_head_on_cached_views(real_subset, tmp_path):
    """unfreeze 0: backbone features of a few views are computed once, the head trains on them;
    the validation embeddings equal what identify computes from the saved checkpoint."""
    database = load_dataset(real_subset).database
    out = tmp_path / "head.pt"
    config = TrainConfig(loss="classifier", epochs=4, identities_per_batch=4, images_per_identity=2,
                         steps_per_epoch=6, unfreeze=0, cached_views=2, lr_head=1e-2)
    trainer = Trainer("efficientnet-lite0", out, config, device="cpu", workers=0, progress=False)
    history = trainer.fit(database)
    assert history[-1]["loss"] < history[0]["loss"]
    assert {"score", "top1", "baks", "baus"} <= set(trainer.baseline)  # the starting model
    (stored,) = tmp_path.glob("frozen-views-*.pt")
    views = torch.load(stored, weights_only=False)
    train, queries, _ = validation_split(database["identity"].to_numpy(), 0.2, 0)
    assert views["views"].shape == (2, len(train), 1280)
    assert views["validation"].shape == (len(train) + len(queries), 1280)
    # The checkpoint's validation record is what its own embeddings give, recomputed as identify
    # computes them (plain transform, backbone + head, L2 norm).
    descriptor = create_descriptor(str(out))
    best = max(history, key=lambda row: row["score"] + 1e-3 * np.nan_to_num(row["top1"]))
    paths = database["path"].astype(str).to_numpy()
    embedded = trainer.embed(descriptor, paths, np.concatenate([train, queries]))
    from wildreid.train import validation_scores

    again = validation_scores(embedded, database["identity"].astype(str).to_numpy(),
                              database["species"].to_numpy(), train, queries,
                              validation_split(database["identity"].to_numpy(), 0.2, 0)[2])
    assert abs(again["top1"] - best["top1"]) < 1e-6 and abs(again["score"] - best["score"]) < 1e-6
    # A resumed run reuses the stored views instead of describing the images again.
    stamp = stored.stat().st_mtime_ns
    Trainer("efficientnet-lite0", out, TrainConfig(**{**config.__dict__, "epochs": 5}),
            device="cpu", workers=0, progress=False).fit(database)
    assert stored.stat().st_mtime_ns == stamp


@pytest.mark.parametrize("loss", LOSSES)
def test_every_loss_trains_its_parameters(loss):
    """Each loss builds for 6 identities and its gradient step lowers it on a fixed batch."""
    torch.manual_seed(0)
    config = TrainConfig(loss=loss, embedding_dim=16)
    criterion, miner = _loss(config, 6, 16)
    head = torch.nn.Linear(32, 16)
    optimizer = torch.optim.SGD([*head.parameters(), *criterion.parameters()], lr=0.05)
    inputs, targets = torch.randn(24, 32), torch.arange(6).repeat(4)
    values = []
    for _ in range(20):
        value = _loss_value(criterion, miner, head(inputs), targets)
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
        values.append(value.item())
    assert values[-1] < values[0], (loss, values[0], values[-1])
