"""Fine-tuning on real benchmark photos, on the CPU: a handful of images, short epochs."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from wildreid.cli import app
from wildreid.data import load_dataset
from wildreid.heads import WithHead
from wildreid.models import create_descriptor
from wildreid.train import (
    LOSSES,
    CheckpointError,
    TrainConfig,
    Trainer,
    TrainingDataError,
    _loss,
    _loss_value,
    _SeededSampler,
    batch_shape,
    frozen_split,
    validation_split,
)

from .conftest import settings_file

#: Every test here reads real photos of the shared benchmark.
pytestmark = pytest.mark.bench

SMALL = {"identities_per_batch": 4, "images_per_identity": 2, "steps_per_epoch": 3,
         "unfreeze": 1, "augment": False}
# Frozen backbone: the head trains on backbone features described once (shared by the tests
# below through ``views_cache``), so a run takes about a second.
HEAD = {"loss": "classifier", "unfreeze": 0, "cached_views": 2, "identities_per_batch": 4,
        "images_per_identity": 2, "steps_per_epoch": 3, "lr_head": 1e-2}


@pytest.fixture(scope="module")
def views_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("frozen-views")


@pytest.mark.slow
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
                                 "cpu", *settings_file(tmp_path, cache=False),
                                 "--output", str(tmp_path / "sub.csv")])
    assert result.exit_code == 0, result.output
    assert len(pd.read_csv(tmp_path / "sub.csv")) == len(load_dataset(real_subset).query)


@pytest.mark.slow
def test_training_resumes_after_the_last_finished_epoch(real_subset, tmp_path):
    database = load_dataset(real_subset).database
    out = tmp_path / "model.pt"
    # cached_views 0: the whole backbone runs on fresh views every step (no frozen part cached).
    config = TrainConfig(loss="triplet-hard", epochs=1, cached_views=0, **SMALL)
    first = Trainer("efficientnet-lite0", out, config, device="cpu", workers=0,
                    progress=False).fit(database)
    assert not list(tmp_path.glob("frozen-views-*.pt"))
    resumed = Trainer("efficientnet-lite0", out, replace(config, epochs=2), device="cpu",
                      workers=0, progress=False)
    history = resumed.fit(database)
    assert [row["epoch"] for row in history] == [1, 2]
    assert history[0] == first[0]  # epoch 1 was not run again


@pytest.mark.slow
def test_training_on_animal_crops(real_subset, tmp_path, regions_cache):
    database = load_dataset(real_subset).database
    trainer = Trainer("efficientnet-lite0", tmp_path / "crop.pt",
                      TrainConfig(loss="triplet-hard", epochs=1, isolation="crop", **SMALL),
                      device="cpu", workers=0, progress=False, cache_dir=regions_cache)
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


def test_validation_split_holds_out_whole_sightings():
    """With dates, a known individual's validation query is a whole sighting (never a photo whose
    twin from the same day stays in training)."""
    identities = np.repeat([f"id{i}" for i in range(12)], 4)
    sightings = np.array([f"id{i // 4}-day{(i % 4) // 2}" for i in range(48)], dtype=object)
    train, queries, unknown = validation_split(identities, 0.2, seed=0, sightings=sightings)
    known = queries[~unknown]
    assert len(known) and not set(sightings[known]) & set(sightings[train])
    assert set(identities[known]) <= set(identities[train])


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


def test_frozen_split_runs_the_backbone_in_two_parts():
    """The frozen part then the trained part give the backbone's own output, wherever the
    split falls (the whole backbone frozen, the last stage trained, all stages trained); a
    model whose layout is not known, or nothing frozen, is not split."""
    import timm

    backbone = create_descriptor("efficientnet-lite0").model.eval()
    images = torch.randn(3, 3, 224, 224)
    with torch.inference_mode():
        expected = backbone(images)
        for unfreeze in (0, 1, 2, 7, 20):
            frozen, trained = frozen_split(backbone, unfreeze)
            torch.testing.assert_close(trained(frozen(images)), expected, rtol=0, atol=1e-5)
    assert frozen_split(backbone, -1) is None
    other = timm.create_model("resnet18", pretrained=False, num_classes=0)
    assert frozen_split(other, 2) is None and frozen_split(other, 0)[0] is other


@pytest.mark.parametrize("unfreeze, shape", [(0, (1280,)), (1, (192, 7, 7))])
@pytest.mark.slow
def test_frozen_part_is_described_once_and_the_rest_trains_on_it(real_subset, tmp_path,
                                                                  unfreeze, shape):
    """unfreeze 0: backbone features of a few views are computed once, the head trains on them;
    unfreeze 1: the output of every stage but the last, and the last stage trains with the head
    on it. The validation embeddings equal what identify computes from the saved checkpoint,
    and the frozen stages keep their weights and batch-norm statistics."""
    database = load_dataset(real_subset).database
    out = tmp_path / "head.pt"
    config = TrainConfig(loss="classifier", epochs=4, identities_per_batch=4, images_per_identity=2,
                         steps_per_epoch=6, unfreeze=unfreeze, cached_views=2, lr_head=1e-2)
    trainer = Trainer("efficientnet-lite0", out, config, device="cpu", workers=0, progress=False)
    history = trainer.fit(database)
    assert history[-1]["loss"] < history[0]["loss"]
    assert {"score", "top1", "baks", "baus"} <= set(trainer.baseline)  # the starting model
    (stored,) = tmp_path.glob("frozen-views-*.pt")
    views = torch.load(stored, weights_only=True)  # tensors and plain values only
    train, queries, _ = validation_split(database["identity"].to_numpy(), 0.2, 0)
    assert views["views"].shape == (2, len(train), *shape)
    assert views["validation"].shape == (len(train) + len(queries), *shape)
    start = create_descriptor("efficientnet-lite0").model.state_dict()
    trained = {name[len("backbone."):]: value
               for name, value in create_descriptor(str(out)).model.state_dict().items()
               if name.startswith("backbone.")}
    stage = lambda name: ".".join(name.split(".")[:2 if name.startswith("blocks.") else 1])  # noqa: E731
    changed = {stage(name) for name, value in start.items() if not torch.equal(value, trained[name])}
    assert changed <= {"blocks.6", "bn2"}  # the last stage; bn2's running statistics
    assert ("blocks.6" in changed) == (unfreeze == 1)
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


def test_batch_shape_fits_the_training_images():
    assert batch_shape(np.repeat(np.arange(10), 8), 4, 4) == (4, 4, [])
    p, k, notes = batch_shape(np.repeat(np.arange(3), [1, 1, 5]), 16, 4)
    assert (p, k) == (3, 2) and len(notes) == 2
    assert "(P) lowered from 16 to 3" in notes[0] and "(K) lowered from 4 to 2" in notes[1]
    with pytest.raises(TrainingDataError, match="needs at least 2"):
        batch_shape(np.zeros(5, int), 4, 4)


def test_a_small_database_trains_with_a_smaller_batch(real_subset, tmp_path, views_cache):
    """P 16 x K 4 on 6 training identities of 2 images: the sampler used to fail an assertion."""
    database = load_dataset(real_subset).database
    train, _, _ = validation_split(database["identity"].to_numpy(), 0.2, 0)
    identities = database["identity"].iloc[train].nunique()
    config = TrainConfig(**{**HEAD, "identities_per_batch": 16, "images_per_identity": 4,
                            "epochs": 1})
    trainer = Trainer("efficientnet-lite0", tmp_path / "m.pt", config, device="cpu", workers=0,
                      progress=False, cache_dir=views_cache)
    assert len(trainer.fit(database)) == 1
    assert (trainer.config.identities_per_batch, trainer.config.images_per_identity) == (
        identities, 2)
    assert f"(P) lowered from 16 to {identities}" in trainer.notes[0]
    assert "(K) lowered from 4 to 2" in trainer.notes[1]


def test_too_few_identities_name_the_dataset(real_subset, tmp_path):
    metadata = pd.read_csv(real_subset / "metadata.csv", dtype=str)
    two = metadata[metadata["identity"].isin(metadata["identity"].dropna().unique()[:2])]
    two.to_csv(tmp_path / "metadata.csv", index=False)
    result = CliRunner().invoke(app, ["train", str(tmp_path), "--out", str(tmp_path / "m.pt"),
                                      "--device", "cpu", "--workers", "0"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert str(tmp_path / "metadata.csv") in result.output
    assert "at least 3 identities" in result.output


def test_runs_repeat_batch_for_batch(real_subset, tmp_path, views_cache):
    """The sampler draws from its own seeded generator, not numpy's global one."""
    labels = np.repeat(np.arange(6), 2)
    sampler = _SeededSampler(labels, 2, 8, 24, seed=0)
    first = list(sampler)
    np.random.seed(5)
    assert list(sampler) == first
    sampler.epoch = 1
    assert list(sampler) != first
    assert list(_SeededSampler(labels, 2, 8, 24, seed=1)) != first

    database = load_dataset(real_subset).database
    histories = []
    for run, global_seed in (("a", 1), ("b", 2)):
        np.random.seed(global_seed)  # whatever else drew from numpy's global generator
        trainer = Trainer("efficientnet-lite0", tmp_path / run / "m.pt",
                          TrainConfig(**HEAD, epochs=2), device="cpu", workers=0, progress=False,
                          cache_dir=views_cache)
        histories.append([row["loss"] for row in trainer.fit(database)])
    assert histories[0] == histories[1]


@pytest.mark.slow
def test_training_state_loads_as_tensors_only(real_subset, tmp_path, views_cache):
    database = load_dataset(real_subset).database
    trainer = Trainer("efficientnet-lite0", tmp_path / "m.pt", TrainConfig(**HEAD, epochs=1),
                      device="cpu", workers=0, progress=False, cache_dir=views_cache)
    trainer.fit(database)
    state = torch.load(trainer.resume_path, weights_only=True)
    assert state["epoch"] == 0 and isinstance(state["best"], float)
    (store,) = views_cache.glob("frozen-views-*.pt")
    assert torch.load(store, weights_only=True)["views"].shape[0] == 2
    resumed = Trainer("efficientnet-lite0", tmp_path / "m.pt", TrainConfig(**HEAD, epochs=2),
                      device="cpu", workers=0, progress=False, cache_dir=views_cache)
    assert [row["epoch"] for row in resumed.fit(database)] == [1, 2]
    # A damaged store of backbone features is only a cache: described again, and said so.
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / store.name).write_bytes(b"truncated")
    again = Trainer("efficientnet-lite0", tmp_path / "again.pt", TrainConfig(**HEAD, epochs=1),
                    device="cpu", workers=0, progress=False, cache_dir=tmp_path / "cache")
    again.fit(database)
    (note,) = again.notes
    assert note.startswith(f"{tmp_path / 'cache' / store.name}: unreadable stored backbone "
                           "features") and note.endswith("computing them again")
    assert torch.equal(torch.load(tmp_path / "cache" / store.name, weights_only=True)["views"],
                       torch.load(store, weights_only=True)["views"])


def test_a_damaged_resume_file_asks_for_fresh(real_subset, tmp_path, views_cache):
    out = tmp_path / "m.pt"
    (tmp_path / "m.last.pt").write_bytes(b"not a checkpoint")
    command = ["train", str(real_subset), "--out", str(out), "--loss", "classifier", "--epochs",
               "1", "--steps-per-epoch", "2", "--cached-views", "2", "--device", "cpu",
               "--workers", "0", "--cache-dir", str(views_cache)]
    result = CliRunner().invoke(app, command)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert str(tmp_path / "m.last.pt") in result.output and "--fresh" in result.output
    result = CliRunner().invoke(app, [*command, "--fresh"])  # default --p 16: more than there are
    assert result.exit_code == 0, result.output
    assert "identities per batch (P) lowered from 16" in result.output


@pytest.mark.slow
def test_the_head_activation_is_kept_by_checkpoints_and_resumes(real_subset, tmp_path,
                                                                 views_cache):
    """A head without ReLU gives embeddings with negative parts; its checkpoint loads as such, a
    checkpoint of the older format (no activation named) loads as ReLU, and a resume with the
    other activation is refused (an activation has no weights, so nothing else would notice)."""
    database = load_dataset(real_subset).database
    out = tmp_path / "m.pt"
    Trainer("efficientnet-lite0", out, TrainConfig(**HEAD, epochs=1, head_activation="none"),
            device="cpu", workers=0, progress=False, cache_dir=views_cache).fit(database)
    descriptor = create_descriptor(str(out))
    assert descriptor.model.head.activation == "none"
    with torch.inference_mode():
        embedding = descriptor.model.eval()(torch.rand(4, 3, *descriptor.input_size))
    assert (embedding < 0).any()
    payload = torch.load(out, weights_only=True)
    payload["head"] = payload["head"][:2]  # as written before the activation was recorded
    torch.save(payload, tmp_path / "old.pt")
    old = create_descriptor(str(tmp_path / "old.pt"))
    assert old.model.head.activation == "relu"
    with torch.inference_mode():
        assert (old.model.eval()(torch.rand(4, 3, *old.input_size)) >= 0).all()
    def resume(activation: str) -> list[dict]:
        return Trainer("efficientnet-lite0", out, TrainConfig(**HEAD, epochs=2,
                                                              head_activation=activation),
                       device="cpu", workers=0, progress=False, cache_dir=views_cache
                       ).fit(database)

    with pytest.raises(CheckpointError, match=r"head_activation 'none' -> 'relu'\); resume it with "
                       r"--head-activation none, or .*--fresh"):
        resume("relu")
    # A state written before the activation was recorded was trained with a ReLU.
    state = torch.load(out.with_name("m.last.pt"), weights_only=True)
    del state["model_config"]
    torch.save(state, out.with_name("m.last.pt"))
    with pytest.raises(CheckpointError, match="--head-activation relu"):
        resume("none")
    assert [row["epoch"] for row in resume("relu")] == [1, 2]  # epoch 1 restored, 2 trained
