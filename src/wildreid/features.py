"""Global descriptors for many images: parallel decoding, batched GPU/CPU inference, disk cache."""

from __future__ import annotations

import copy
import dataclasses
import functools
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from wildreid.cache import ArrayCache, content_keys
from wildreid.defaults import DEFAULT_CACHE_DIR
from wildreid.images import ImageError, load_image
from wildreid.models import Descriptor
from wildreid.stage import CachedStage

#: The version of how features are computed from a photo (decoding, isolation, preprocessing,
#: the forward pass): part of the cache key. Bump it when that code changes what it gives
#: (tests/test_hostile_cache.py's recorded hash of that code says when).
FEATURES_VERSION = 1

#: ``precision``: what the descriptor's forward pass runs in.
PRECISIONS = ("fp32", "fp16")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA without one is an error, not a fallback."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but PyTorch sees no CUDA GPU; use cpu or auto")
    return torch.device(device)


class _Images(TorchDataset):
    def __init__(self, paths: Sequence[str], transform: Callable, regions=None, isolation="none"):
        self.paths = paths
        self.transform = transform
        self.regions = regions
        self.isolation = isolation

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        try:
            image = load_image(self.paths[index])
            if self.regions is not None:
                image = self.regions[index].apply(image, self.isolation)
            return index, torch.as_tensor(self.transform(image)), None
        except ImageError as error:
            return index, None, str(error)


def _one_thread(_worker: int) -> None:
    # Decoding workers each spawning a full thread pool fight the model for the same cores.
    torch.set_num_threads(1)


def _collate(batch):
    good = [(i, t) for i, t, e in batch if e is None]
    errors = [e for _, _, e in batch if e is not None]
    indices = [i for i, _ in good]
    tensors = torch.stack([t for _, t in good]) if good else None
    return indices, tensors, errors


def image_batches(paths: Sequence[str], transform: Callable, batch_size: int, workers: int,
                 regions: Sequence | None = None, isolation: str = "none",
                 pin_memory: bool = False) -> DataLoader:
    """Batches ``(indices, tensor, errors)`` of ``transform(image)``, decoded in worker processes;
    undecodable files come back as error messages, not exceptions, so one bad file does not stop
    the others."""
    return DataLoader(
        _Images(paths, transform, regions, isolation), batch_size=batch_size,
        num_workers=workers if len(paths) > batch_size else 0, collate_fn=_collate,
        worker_init_fn=_one_thread, pin_memory=pin_memory)


class FeatureExtractor(CachedStage):
    """Turns image files into L2-normalised embeddings (float32, one row per image).

    ``isolation``: what the descriptor sees of each image given its region (``none``, ``crop``,
    ``mask``; see :meth:`wildreid.isolation.Region.apply`). Features are cached under ``cache_dir``
    by descriptor (arch, weights, preprocessing), isolation, device type and precision,
    :data:`FEATURES_VERSION`, file content and region; ``cache_dir=None`` disables the disk
    cache. ``precision``: ``fp16`` (autocast, CUDA only) or ``fp32``; default fp16 on CUDA.
    ``pool``: compute on a Ray cluster (:class:`~wildreid.distributed.RayPool`), whose workers
    run on this device type in this precision, whatever they have.
    """

    what = "features"

    def __init__(self, descriptor: Descriptor, device: str | torch.device = "auto",
                 batch_size: int = 64, workers: int | None = None,
                 cache_dir: str | Path | None = DEFAULT_CACHE_DIR, progress: bool = True,
                 isolation: str = "none", pool=None, precision: str | None = None):
        self.descriptor = descriptor
        self.device = resolve_device(device)
        if precision is None:
            precision = "fp16" if self.device.type == "cuda" else "fp32"
        if precision not in PRECISIONS or (precision == "fp16" and self.device.type != "cuda"):
            raise ValueError(f"precision {precision!r} on {self.device.type}: use fp32, or fp16 "
                             "on CUDA")
        self.precision = precision
        self.batch_size = batch_size
        self.workers = min(8, os.cpu_count() or 1) if workers is None else workers
        self.isolation = isolation
        # fp16, and another device's kernels, move embeddings a little: enough to change a
        # ranking near a tie, so the rows of each are cached apart.
        self.namespace = (descriptor.cache_key + ("" if isolation == "none" else f"-{isolation}")
                          + f"-{self.device.type}-{precision}-v{FEATURES_VERSION}")
        super().__init__(ArrayCache(cache_dir, self.namespace) if cache_dir is not None else None,
                         progress, pool)
        self._on_device = False

    def _model(self) -> torch.nn.Module:
        if not self._on_device:
            self.descriptor.model.to(self.device).eval()
            if self.device.type == "cuda":
                self.descriptor.model.to(memory_format=torch.channels_last)
            self._on_device = True
        return self.descriptor.model

    @torch.inference_mode()
    def _embed(self, batch: torch.Tensor) -> np.ndarray:
        batch = batch.to(self.device, non_blocking=True)
        if self.device.type == "cuda":
            batch = batch.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=torch.float16,
                            enabled=self.precision == "fp16"):
            output = self._model()(batch)
        output = torch.nn.functional.normalize(output.float().flatten(1), dim=1)
        return output.cpu().numpy()

    def compute(self, paths: Sequence[str], items: Sequence):
        regions = None if self.isolation == "none" else list(items)
        loader = image_batches(list(paths), self.descriptor.transform(), self.batch_size,
                               self.workers, regions, self.isolation,
                               pin_memory=self.device.type == "cuda")
        for indices, batch, errors in loader:
            yield indices, (self._embed(batch) if batch is not None else None), errors

    def key(self) -> str:
        return f"{self.namespace}-{self.batch_size}"

    def worker(self) -> Callable[[], FeatureExtractor]:
        network = copy.deepcopy(self.descriptor.model).cpu()  # loads wherever the worker runs
        # This device type and precision, not the worker's own: its rows are cached under this
        # extractor's namespace (a GPU worker of a --device cpu run must not answer in fp16).
        return functools.partial(FeatureExtractor, dataclasses.replace(self.descriptor,
                                                                       model=network),
                                 device=self.device.type, batch_size=self.batch_size, workers=0,
                                 cache_dir=None, progress=False, isolation=self.isolation,
                                 precision=self.precision)

    def __call__(self, paths: Sequence[str | Path], description: str = "features",
                 regions: Sequence | None = None) -> np.ndarray:
        """Embeddings of ``paths``; with ``regions`` (one :class:`Region` per path) each image is
        isolated first, as the extractor's ``isolation`` says."""
        paths = [str(p) for p in paths]
        if not paths:
            raise ValueError("no images to describe")
        if regions is not None and len(regions) != len(paths):
            raise ValueError(f"{len(regions)} regions for {len(paths)} images")
        if self.isolation == "none":
            regions = None
        keys = content_keys(paths, workers=max(1, self.workers))
        if regions is not None:
            keys = [key if region.is_whole else f"{key}-{region.fingerprint}"
                    for key, region in zip(keys, regions)]
        items = regions if regions is not None else [None] * len(paths)
        rows = self.rows(paths, keys, items, description)
        if self.last_computed and len({row.shape for row in rows}) > 1:
            # Cached rows of another width than the descriptor gives now: the cache dropped them
            # when these were stored (damage); compute them again too.
            width = self._memory[self.last_computed[0]].shape
            self.forget([k for k, row in zip(keys, rows) if row.shape != width])
            rows = self.rows(paths, keys, items, description)
        return np.stack(rows).astype(np.float32, copy=False)
