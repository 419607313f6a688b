"""Fine-tune a descriptor on the database: ``wildreid train``.

Metric learning with pytorch-metric-learning: ArcFace, sub-center ArcFace, triplet with batch-hard
or semi-hard mining, or a cross-entropy baseline (frozen backbone, 512-d head). Batches hold P
identities x K images (identities with fewer than K images are oversampled; P and K shrink, with a
note, to what a small database allows), drawn from the run's seed. Validation stays
inside the database: some identities are held out entirely (pseudo-unknowns) and one image of
each other identity with three or more (pseudo-known queries); each epoch reports the open-set
score and top-1 there. Query images and solutions are never read.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from rich.console import Console
from rich.text import Text
from torch import nn
from torch.utils.data import DataLoader, Sampler
from torch.utils.data import Dataset as TorchDataset

from wildreid.features import FeatureExtractor, resolve_device
from wildreid.heads import EmbeddingHead, WithHead
from wildreid.images import load_image
from wildreid.metrics import baks, baus, best_threshold, geometric_score, threshold_curve
from wildreid.models import Descriptor, create_descriptor, save_descriptor
from wildreid.openset import fit_threshold
from wildreid.progress import progress_bar
from wildreid.pseudo_queries import pseudo_split, sightings_of
from wildreid.ranking import IdentityIndex
from wildreid.registry import Registry

#: Registered losses: ``@LOSSES.register(name, summary)`` over a function of ``classes`` and
#: ``dim`` returning (criterion, miner or None).
LOSSES = Registry("loss")


@dataclass
class TrainConfig:
    """Settings of one fine-tuning run (all plain values, stored in the checkpoint)."""

    loss: str = "arcface"
    epochs: int = 20
    identities_per_batch: int = 16  # P
    images_per_identity: int = 4  # K
    accumulate: int = 1  # gradient accumulation steps
    lr_backbone: float = 1e-4
    lr_head: float = 1e-3
    weight_decay: float = 1e-4
    warmup_epochs: float = 1.0
    unfreeze: int = -1  # last N backbone blocks trained; -1 all; 0 none (head only)
    embedding_dim: int = 512
    head_activation: str = "none"  # none | relu: after the head's batch norm (heads.EmbeddingHead)
    augment: bool = True
    flip: str = "auto"  # auto: flip only views without a left/right orientation; all; none
    isolation: str = "none"  # none | crop | mask: train on the animal (identify with the same)
    unknown_fraction: float = 0.2
    patience: int = 5  # epochs without a better validation score before stopping
    steps_per_epoch: int | None = None  # default: one pass over the training images
    # The frozen part of the backbone (all of it with unfreeze 0; the stages before the last
    # N with unfreeze N, where the model's layout is known): its output on this many views of
    # each training image (the first plain, the rest augmented) is computed once and the
    # trained part learns on them. 0: every step runs the whole backbone on a fresh view.
    cached_views: int = 4
    seed: int = 0


class TrainingDataError(ValueError):
    """A database that cannot be trained on (too few identities or images)."""


class CheckpointError(ValueError):
    """A ``.last.pt`` file that cannot be resumed from."""


class _CachedViews(TorchDataset):
    """The frozen part's outputs ``(views, N, ...)`` on the training images: a random view per
    draw."""

    def __init__(self, views: torch.Tensor, labels: np.ndarray):
        self.views, self.labels = views, labels

    def __len__(self) -> int:
        return self.views.shape[1]

    def __getitem__(self, index: int):
        view = int(torch.randint(self.views.shape[0], ()))
        return self.views[view, index], self.labels[index]


class _Training(TorchDataset):
    def __init__(self, paths, labels, flippable, transform, regions=None, isolation="none"):
        self.paths, self.labels, self.flippable, self.transform = paths, labels, flippable, transform
        self.regions, self.isolation = regions, isolation

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        image = load_image(self.paths[index])
        if self.regions is not None:
            image = self.regions[index].apply(image, self.isolation)
        if self.flippable[index] and torch.rand(()) < 0.5:
            image = image.transpose(0)  # PIL: FLIP_LEFT_RIGHT
        return self.transform(image), self.labels[index]


def _transform(descriptor: Descriptor, augment: bool):
    from torchvision import transforms

    if not augment:
        return descriptor.transform()
    mode = transforms.InterpolationMode(descriptor.interpolation)
    return transforms.Compose([
        transforms.RandomResizedCrop(descriptor.input_size, scale=(0.6, 1.0), ratio=(0.6, 1.7),
                                     interpolation=mode, antialias=True),
        transforms.ColorJitter(0.3, 0.3, 0.2, 0.02),
        transforms.ToTensor(),
        transforms.Normalize(descriptor.mean, descriptor.std),
        transforms.RandomErasing(p=0.25, scale=(0.02, 0.15)),
    ])


def validation_split(identities: np.ndarray, unknown_fraction: float, seed: int,
                     sightings: np.ndarray | None = None
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row roles: ``train`` (used for training and as the validation reference), ``queries``
    (held out: all images of pseudo-unknown identities, one image — one sighting, with
    ``sightings`` — of each other identity with two or more) and, per query, whether its
    identity is unknown — the open-set simulation of :func:`wildreid.pseudo_queries.pseudo_split`,
    holding out as little as possible."""
    split = pseudo_split(np.asarray(identities), np.random.default_rng(seed), unknown_fraction,
                         query_fraction=0.0, sightings=sightings)
    if split is None:
        raise TrainingDataError("training needs at least 3 identities in the database, and at "
                                "least one with two or more images; add more labelled "
                                "individuals")
    return split.reference, split.queries, split.unknown


def batch_shape(labels: np.ndarray, identities_per_batch: int, images_per_identity: int
                ) -> tuple[int, int, list[str]]:
    """P identities x K images per batch that the training ``labels`` allow, and a note for
    each value shrunk from the one asked for. A batch cannot hold more identities than there
    are; K shrinks (not below 2, which positive pairs need) so that a batch does not exceed the
    training images, rather than repeating each image many times."""
    classes, images = len(np.unique(labels)), len(labels)
    if classes < 2:  # losses need negatives: two identities in every batch
        raise TrainingDataError(f"only {classes} identity left to train on after holding out "
                                "the validation; training needs at least 2: add more labelled "
                                "individuals")
    p = min(identities_per_batch, classes)
    k = min(images_per_identity, max(2, images // p))
    notes = []
    if p < identities_per_batch:
        notes.append(f"identities per batch (P) lowered from {identities_per_batch} to {p}: "
                     f"the training part of the database has {classes} identities")
    if k < images_per_identity:
        notes.append(f"images per identity (K) lowered from {images_per_identity} to {k}: "
                     f"a batch of {p} x {images_per_identity} would exceed the {images} "
                     "training images")
    return p, k, notes


def _epoch_seed(seed: int, epoch: int) -> int:
    """The seed of one epoch's draws: a run repeats, and a resumed epoch draws what the
    uninterrupted run did."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


class _SeededSampler(Sampler):
    """pytorch-metric-learning's ``MPerClassSampler`` (``per_identity`` images of each identity
    per batch), drawing from a generator seeded by ``seed`` and ``epoch`` instead of numpy's
    unseeded global one."""

    def __init__(self, labels: np.ndarray, per_identity: int, batch: int, length: int, seed: int):
        from pytorch_metric_learning.samplers import MPerClassSampler

        self.inner = MPerClassSampler(labels, per_identity, batch_size=batch,
                                      length_before_new_iter=length)
        self.seed, self.epoch = seed, 0

    def __len__(self) -> int:
        return len(self.inner)

    def __iter__(self):
        from pytorch_metric_learning.utils import common_functions

        # The library shuffles its label list in place; start each epoch from the same order.
        self.inner.labels = sorted(self.inner.labels_to_indices)
        shared = common_functions.NUMPY_RANDOM  # the library's indirection for its randomness
        common_functions.NUMPY_RANDOM = np.random.RandomState(_epoch_seed(self.seed, self.epoch))
        try:
            return iter(list(self.inner))  # drawn now, while the seeded generator is in place
        finally:
            common_functions.NUMPY_RANDOM = shared


@LOSSES.register("arcface", "ArcFace (pytorch-metric-learning), margin 28.6°, scale 64")
def _arcface(classes: int, dim: int):
    from pytorch_metric_learning import losses

    return losses.ArcFaceLoss(num_classes=classes, embedding_size=dim, margin=28.6, scale=64), None


@LOSSES.register("subcenter-arcface", "Sub-center ArcFace, 3 centres per identity")
def _subcenter_arcface(classes: int, dim: int):
    from pytorch_metric_learning import losses

    return losses.SubCenterArcFaceLoss(num_classes=classes, embedding_size=dim, margin=28.6,
                                       scale=64, sub_centers=3), None


@LOSSES.register("triplet-hard", "triplet margin 0.2, batch-hard mining")
def _triplet_hard(classes: int, dim: int):
    from pytorch_metric_learning import losses, miners

    return losses.TripletMarginLoss(margin=0.2), miners.BatchHardMiner()


@LOSSES.register("triplet-semihard", "triplet margin 0.2, semi-hard mining")
def _triplet_semihard(classes: int, dim: int):
    from pytorch_metric_learning import losses, miners

    return (losses.TripletMarginLoss(margin=0.2),
            miners.TripletMarginMiner(margin=0.2, type_of_triplets="semihard"))


@LOSSES.register("classifier", "cross-entropy over identities (linear layer on the head)")
def _classifier(classes: int, dim: int):
    return nn.Linear(dim, classes), None


def _loss(config: TrainConfig, classes: int, dim: int):
    return LOSSES.create(config.loss, classes=classes, dim=dim)


def _loss_value(criterion, miner, embeddings: torch.Tensor, targets: torch.Tensor
                ) -> torch.Tensor:
    if isinstance(criterion, nn.Linear):  # classifier: cross-entropy over identities
        return nn.functional.cross_entropy(criterion(embeddings), targets)
    if miner is not None:
        return criterion(embeddings, targets, miner(embeddings, targets))
    return criterion(embeddings, targets)


def _trainable_blocks(backbone: nn.Module) -> list[nn.Module]:
    """Top-level stages in order (timm models expose ``blocks`` or ``stages``)."""
    for name in ("blocks", "stages", "layers"):
        if hasattr(backbone, name):
            return list(getattr(backbone, name))
    return list(backbone.children())


#: timm's EfficientNet / MobileNet layout: ``forward`` runs these in order (the classifier is
#: an identity in a descriptor), so the backbone splits between any two of its blocks.
_BLOCK_LAYOUT = ("conv_stem", "bn1", "blocks", "conv_head", "bn2", "global_pool")


def frozen_split(backbone: nn.Module, unfreeze: int) -> tuple[nn.Module, nn.Module] | None:
    """The backbone as ``(frozen, trained)`` with ``trained(frozen(x)) == backbone(x)``: all of
    it frozen for ``unfreeze`` 0; for N > 0, the stages before the last N frozen where the
    model's layout is known (timm's EfficientNet family), else ``None`` (as for -1: nothing
    frozen). The frozen part's output can then be computed once per view."""
    if unfreeze == 0:
        return backbone, nn.Identity()
    known = (all(hasattr(backbone, name) for name in _BLOCK_LAYOUT)
             and isinstance(getattr(backbone, "classifier", None), nn.Identity)
             and not getattr(backbone, "drop_rate", 0))
    if unfreeze < 0 or not known:
        return None
    blocks = list(backbone.blocks)
    tail = max(0, len(blocks) - unfreeze)
    return (nn.Sequential(backbone.conv_stem, backbone.bn1, *blocks[:tail]),
            nn.Sequential(*blocks[tail:], backbone.conv_head, backbone.bn2, backbone.global_pool))


class Trainer:
    """Fine-tunes ``model`` (a registry name or checkpoint) on a database DataFrame with
    ``filepath``/``path``, ``identity`` and optional ``orientation``; writes ``out`` (the best
    validation checkpoint, loadable by ``wildreid identify --model``) and ``out.last.pt``
    (everything needed to resume)."""

    def __init__(self, model: str, out: str | Path, config: TrainConfig | None = None,
                 device: str = "auto", workers: int | None = None, progress: bool = True,
                 cache_dir: str | Path | None = None):
        self.model_name, self.out = model, Path(out)
        self.config = config or TrainConfig()
        self.device = resolve_device(device)
        self.workers = workers if workers is not None else min(8, torch.get_num_threads())
        self.progress = progress
        self.cache_dir = cache_dir
        self.history: list[dict] = []
        #: What the run changed from what was asked (e.g. a smaller batch), also printed.
        self.notes: list[str] = []
        #: Validation scores of the starting model (before any training), set by ``fit``.
        self.baseline: dict | None = None

    @property
    def resume_path(self) -> Path:
        return self.out.with_name(self.out.stem + ".last.pt")

    def _note(self, text: str) -> None:
        self.notes.append(text)
        if self.progress:  # beside the progress lines, on stderr
            # Text, not markup: notes name files (a cache folder may be called "[x]").
            Console(stderr=True).print(Text.assemble(("note:", "yellow"), f" {text}"),
                                       highlight=False)

    def _model_config(self) -> dict:
        return {"head_activation": self.config.head_activation}

    def _resume(self, model: nn.Module, criterion: nn.Module, optimizer, scheduler) -> dict:
        """Load ``resume_path`` into the training objects; returns the whole state (counters,
        history)."""
        path = self.resume_path
        fresh = "rerun with --fresh (resume=False) to start over, which replaces it"
        try:  # tensors and plain values only: loading runs no code from the file
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # unreadable for any reason: truncated, not torch, pickled code
            raise CheckpointError(f"{path}: not a training state that can be resumed "
                                  f"({type(error).__name__}: {str(error)[:200]}); {fresh}") from None
        needed = ("model", "criterion", "optimizer", "scheduler", "epoch", "best", "stale", "history")
        if not isinstance(state, dict) or not all(key in state for key in needed):
            raise CheckpointError(f"{path}: not a wildreid training state (it needs "
                                  f"{', '.join(needed)}); {fresh}")
        # What shapes the model but leaves no trace in its state dict (an activation has no
        # weights) must match, or the resumed run would silently train another model.
        # States written before a setting was recorded had its old value.
        written = {"head_activation": EmbeddingHead.UNRECORDED, **state.get("model_config", {})}
        current = self._model_config()
        changed = {name: value for name, value in current.items() if written.get(name) != value}
        if changed:
            settings = ", ".join(f"{name} {written.get(name)!r} -> {value!r}"
                                 for name, value in changed.items())
            options = " ".join(f"--{name.replace('_', '-')} {written.get(name)}"
                               for name in changed)
            raise CheckpointError(f"{path}: written for another model ({settings}); resume it "
                                  f"with {options}, or {fresh}")
        try:
            model.load_state_dict(state["model"])
            criterion.load_state_dict(state["criterion"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
        except (KeyError, TypeError, ValueError, RuntimeError) as error:
            raise CheckpointError(f"{path}: written for another model or loss "
                                  f"({type(error).__name__}: {str(error)[:200]}); {fresh}") from None
        return state

    def fit(self, database: pd.DataFrame, resume: bool = True) -> list[dict]:
        config = self.config
        torch.manual_seed(config.seed)
        paths = database["filepath" if "filepath" in database.columns else "path"].astype(str)
        paths = paths.to_numpy()
        identities = database["identity"].astype(str).to_numpy()
        orientation = (database["orientation"].astype(object).to_numpy()
                       if "orientation" in database.columns else np.full(len(paths), None))
        species = (database["species"].astype(object).to_numpy() if "species" in database.columns
                   else None)
        sightings = sightings_of(database)
        train, queries, unknown = validation_split(identities, config.unknown_fraction, config.seed,
                                                   sightings)
        regions = None
        if config.isolation != "none":
            from wildreid.isolation import Isolator

            regions = Isolator(cache_dir=self.cache_dir, progress=self.progress)(
                pd.DataFrame({"filepath": paths}), "training images: regions")
        self._regions = regions
        names, labels = np.unique(identities[train], return_inverse=True)
        p, k, notes = batch_shape(labels, config.identities_per_batch, config.images_per_identity)
        for note in notes:
            self._note(note)
        # What was trained with, as the checkpoint records it.
        self.config = config = replace(config, identities_per_batch=p, images_per_identity=k)

        descriptor = create_descriptor(self.model_name)
        backbone = descriptor.model
        features = backbone.num_features if hasattr(backbone, "num_features") else None
        if features is None:
            raise ValueError(f"{self.model_name}: cannot tell the backbone's feature size")
        model = WithHead(backbone, EmbeddingHead(features, config.embedding_dim,
                                                   config.head_activation)).to(self.device)
        descriptor.model = model
        criterion, miner = _loss(config, len(names), config.embedding_dim)
        criterion = criterion.to(self.device)
        for parameter in backbone.parameters():
            parameter.requires_grad = config.unfreeze != 0
        if config.unfreeze > 0:
            for parameter in backbone.parameters():
                parameter.requires_grad = False
            for block in _trainable_blocks(backbone)[-config.unfreeze:]:
                for parameter in block.parameters():
                    parameter.requires_grad = True
        groups = [{"params": [p for p in backbone.parameters() if p.requires_grad],
                   "lr": config.lr_backbone},
                  {"params": [*model.head.parameters(), *criterion.parameters()],
                   "lr": config.lr_head}]
        optimizer = torch.optim.AdamW([g for g in groups if g["params"]],
                                      weight_decay=config.weight_decay)
        batch = config.identities_per_batch * config.images_per_identity
        steps = config.steps_per_epoch or max(1, len(train) // batch)
        total = steps * config.epochs
        warmup = max(1, round(config.warmup_epochs * steps))

        def schedule(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        scaler = torch.amp.GradScaler(enabled=self.device.type == "cuda")
        start_epoch, best, stale = 0, -math.inf, 0
        if resume and self.resume_path.is_file():
            state = self._resume(model, criterion, optimizer, scheduler)
            start_epoch, best, stale = state["epoch"] + 1, state["best"], state["stale"]
            self.history, self.baseline = state["history"], state.get("baseline")

        flippable = np.array([config.flip == "all" or (
            config.flip == "auto" and not (isinstance(o, str) and ("left" in o or "right" in o)))
            for o in orientation[train]])
        dataset = _Training(paths[train], labels, flippable, _transform(descriptor, config.augment),
                            None if regions is None else [regions[i] for i in train],
                            config.isolation)
        forward, workers, validation_views = model, self.workers, None
        split = frozen_split(backbone, config.unfreeze) if config.cached_views else None
        if split is not None:  # the trained part learns on the frozen part's cached outputs
            frozen, trained = split
            views, validation_views = self._frozen_views(frozen, descriptor, dataset, paths,
                                                         queries, train)
            forward = nn.Sequential(trained, model.head)
            dataset, workers = _CachedViews(views, labels), 0
        validation_rows = np.concatenate([train, queries])

        def validate(start: bool) -> dict:
            """Validation scores of the starting model (``start``) or of the trained one, from
            embeddings computed as ``wildreid identify`` would."""
            if validation_views is not None:  # the frozen part's cached plain views
                with torch.inference_mode():
                    out = torch.cat([(trained if start else forward)(chunk.to(self.device))
                                     for chunk in validation_views.split(256)])
                embedded = nn.functional.normalize(out.float(), dim=1).cpu().numpy()
            else:
                descriptor.model = backbone if start else model
                embedded = self.embed(descriptor, paths, validation_rows)
                descriptor.model = model
            return validation_scores(embedded, identities, species, train, queries, unknown,
                                     sightings)

        if self.baseline is None:  # the starting model on the same validation: what to beat
            self.baseline = validate(start=True)
        sampler = _SeededSampler(labels, config.images_per_identity, batch, steps * batch,
                                 config.seed)
        loader = DataLoader(dataset, batch_size=batch, sampler=sampler, drop_last=True,
                            num_workers=workers, pin_memory=self.device.type == "cuda",
                            persistent_workers=workers > 0)
        for epoch in range(start_epoch, config.epochs):
            # Batches, augmentations and cached-view draws: the same whether or not this run
            # described the images first (which draws random numbers) or resumed.
            sampler.epoch = epoch
            torch.manual_seed(_epoch_seed(config.seed, epoch))
            model.train()  # a cached frozen part never runs here: its statistics stay
            losses, started = [], time.perf_counter()
            with progress_bar("images", self.progress) as bar:
                task = bar.add_task(f"epoch {epoch + 1}/{config.epochs}", total=steps * batch)
                optimizer.zero_grad(set_to_none=True)
                for step, (images, targets) in enumerate(loader):
                    images = images.to(self.device, non_blocking=True)
                    targets = targets.to(self.device)
                    with torch.autocast(self.device.type, dtype=torch.float16,
                                        enabled=self.device.type == "cuda"):
                        embeddings = forward(images)
                    loss = _loss_value(criterion, miner, embeddings.float(), targets)
                    scaler.scale(loss / config.accumulate).backward()
                    if (step + 1) % config.accumulate == 0:
                        scaler.step(optimizer)
                        scaler.update()
                        optimizer.zero_grad(set_to_none=True)
                    scheduler.step()
                    losses.append(loss.item())
                    bar.update(task, description=f"epoch {epoch + 1}/{config.epochs} "
                                                 f"loss {np.mean(losses[-20:]):.3f}")
                    bar.advance(task, len(images))
            model.eval()
            training_seconds = time.perf_counter() - started
            scores = validate(start=False)
            record = {"epoch": epoch + 1, "loss": float(np.mean(losses)),
                      "seconds": round(time.perf_counter() - started, 1),
                      "images_per_s": round(steps * batch / training_seconds, 1),
                      **scores}
            self.history.append(record)
            # Top-1 breaks ties of the open-set score (small validations often score 0).
            key = scores["score"] + 1e-3 * np.nan_to_num(scores["top1"])
            if key > best:
                best, stale = float(key), 0  # a plain float: the state loads with weights_only
                save_descriptor(descriptor, self.out, extra={"config": asdict(self.config),
                                                             "validation": record,
                                                             "baseline": self.baseline,
                                                             "trained_from": self.model_name})
            else:
                stale += 1
            torch.save({"model": model.state_dict(), "criterion": criterion.state_dict(),
                        "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                        "epoch": epoch, "best": best, "stale": stale, "history": self.history,
                        "baseline": self.baseline, "model_config": self._model_config()},
                       self.resume_path.with_suffix(".partial"))
            self.resume_path.with_suffix(".partial").replace(self.resume_path)
            if stale >= config.patience:
                break
        return self.history

    def embed(self, descriptor: Descriptor, paths: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """Embeddings of ``paths[rows]`` as ``wildreid identify`` would compute them."""
        extractor = FeatureExtractor(descriptor, device=str(self.device), cache_dir=None,
                                     workers=self.workers, progress=False,
                                     isolation=self.config.isolation)
        regions = None if self._regions is None else [self._regions[i] for i in rows]
        return extractor(list(paths[rows]), "validation", regions)

    @torch.inference_mode()
    def _frozen_views(self, frozen: nn.Module, descriptor: Descriptor, augmented: _Training,
                      paths: np.ndarray, queries: np.ndarray, train: np.ndarray
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """The frozen part's outputs: ``cached_views`` views of each training image (plain, then
        augmented) and the plain view of every validation image (training order first). Stored
        in the cache folder (else beside the checkpoint), so a resumed run or another loss on
        the same images does not recompute them."""
        config = self.config
        rows = np.concatenate([train, queries])
        signature = {"paths": paths[rows].tolist(), "views": config.cached_views,
                     "isolation": config.isolation, "seed": config.seed, "flip": config.flip,
                     "augment": config.augment, "model": descriptor.cache_key}
        if config.unfreeze:  # the whole backbone's (unfreeze 0) keep their earlier stores
            signature["frozen_until_last"] = config.unfreeze
        digest = hashlib.blake2b(repr(signature).encode(), digest_size=8).hexdigest()
        folder = Path(self.cache_dir) if self.cache_dir is not None else self.out.parent
        store = folder / f"frozen-views-{digest}.pt"
        if store.is_file():
            try:
                saved = torch.load(store, map_location="cpu", weights_only=True)
                return saved["views"], saved["validation"]
            except Exception as error:  # a damaged cache is recomputed, not fatal
                self._note(f"{store}: unreadable stored backbone features "
                           f"({type(error).__name__}); computing them again")
        frozen.eval()
        plain = _Training(paths[rows], np.zeros(len(rows), int), np.zeros(len(rows), bool),
                          _transform(descriptor, False),
                          None if self._regions is None else [self._regions[i] for i in rows],
                          config.isolation)
        passes = [("plain view", plain)] + [(f"augmented view {v}", augmented)
                                             for v in range(1, config.cached_views)]
        outputs = []
        for name, dataset in passes:
            loader = DataLoader(dataset, batch_size=64, num_workers=self.workers)
            found = []
            with progress_bar("images", self.progress) as bar:
                task = bar.add_task(f"frozen part of the backbone: {name}", total=len(dataset))
                for images, _ in loader:
                    images = images.to(self.device)
                    with torch.autocast(self.device.type, dtype=torch.float16,
                                        enabled=self.device.type == "cuda"):
                        found.append(frozen(images).float().cpu())
                    bar.advance(task, len(images))
            outputs.append(torch.cat(found))
        views = torch.stack([outputs[0][:len(train)], *outputs[1:]])
        validation = outputs[0]
        folder.mkdir(parents=True, exist_ok=True)
        torch.save({"signature": signature, "views": views, "validation": validation},
                   store.with_suffix(".partial"))
        store.with_suffix(".partial").replace(store)
        return views, validation


def validation_scores(embedded: np.ndarray, identities: np.ndarray, species: np.ndarray | None,
                      train: np.ndarray, queries: np.ndarray, unknown: np.ndarray,
                      sightings: np.ndarray | None = None) -> dict:
    """Open-set score and top-1 of the held-out queries (rows after ``len(train)`` of
    ``embedded``) against the training images (the first rows), within each species; the
    threshold fitted on the training images (by ``sightings`` when given)."""
    reference, probe = embedded[:len(train)], embedded[len(train):]
    index = IdentityIndex(reference, identities[train],
                          None if species is None else species[train])
    names, top = index.search(probe, None if species is None else species[queries], k=1)
    truth = identities[queries]
    known = ~unknown
    top1 = float((names[known, 0] == truth[known]).mean()) if known.any() else float("nan")
    threshold, _ = fit_threshold(reference, identities[train], seed=0,
                                 sightings=None if sightings is None else sightings[train])
    answers = np.where(top[:, 0] >= threshold, names[:, 0], "new_individual")
    unknown_ids = set(truth[unknown])
    baks_value = baks(truth, answers, unknown_ids)
    baus_value = baus(truth, answers, unknown_ids)
    curve = threshold_curve(truth, names[:, 0], top[:, 0], unknown)
    return {"score": geometric_score(baks_value, baus_value), "top1": top1,
            "baks": baks_value, "baus": baus_value,
            "oracle_score": best_threshold(curve)[1], "threshold": threshold}
