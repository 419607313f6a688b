"""Runs over a Ray cluster (``wildreid identify ... --ray local|auto|ADDRESS``;
``pip install 'wildreid[ray]'``).

The cached stages (global description, isolation, local keypoints; :mod:`wildreid.stage`) and
pair matching are cut into chunks and sent to workers — one Ray actor per GPU, or per CPU on a
cluster without GPUs — that each build their network once. The driver keeps every worker busy
with two chunks in flight, writes each finished chunk into the usual content-keyed cache, and so
gives the answers of a single-process run; a killed driver resumes from that cache. A worker that
dies is restarted by Ray and its chunk retried (``max_restarts``/``max_task_retries``). Progress
bars count what the whole cluster finished (images/s, pairs/s cluster-wide).

``local`` starts a Ray instance on this machine (its CPUs and GPUs), ``auto`` joins the cluster
this machine belongs to (``ray start --head`` / ``--address``), anything else is the address of
a cluster's head. A cluster of several machines needs the photos and the cache folder at the
same paths on every machine (a shared file system).

Workers compute on the driver's device type and in its precision — what the cache keys say —
whatever hardware they have: a ``--device cpu`` run gives fp32 rows on a GPU cluster too.
``--ray`` is checked before any work (Ray installed, the cluster reachable); a run that found
every row in the cache and sent nothing to the cluster says so (:class:`RayNotNeeded`).
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np

RAY_HINT = "pip install 'wildreid[ray]'"
_REACH_TIMEOUT_S = 5  # to open a connection to a cluster's head, before any work
#: Workers started by this process, by cluster and pool settings; recipes shipped, by key.
_ACTORS: dict[tuple, list] = {}
_RECIPES: dict[tuple, Any] = {}


class RayNotNeeded(UserWarning):
    """A ``--ray`` run sent nothing to the cluster: every row it needed was in the cache."""


class RayUnavailable(ValueError):
    """``--ray`` was asked for, but Ray is not installed or its cluster cannot be reached (a
    ``ValueError``: the command line reports it in one line)."""


class _Worker:
    """A Ray actor holding the components it was asked to run (a cached stage's worker copy, a
    pair scorer), each built once on the worker from its recipe (a picklable callable: networks
    load where they run) and kept for the next chunks."""

    def __init__(self):
        self.components: dict[tuple, Any] = {}

    def call(self, key: tuple, recipe: list, method: str, *args) -> Any:
        if key not in self.components:
            import ray

            self.components[key] = ray.get(recipe[0])()  # (in a list: fetched only when needed)
        return getattr(self.components[key], method)(*args)


class RayPool:
    """Workers on a Ray cluster. ``workers``: how many (default: one per GPU, else one per
    CPU); ``cpus_per_worker``: CPU slots each takes."""

    #: Chunks sent to workers by every pool of this process (a run that sent none did not need
    #: Ray: every row it needed was in the cache).
    chunks_sent = 0

    def __init__(self, address: str = "local", workers: int | None = None,
                 cpus_per_worker: float = 1.0):
        self.address = address
        self.workers = workers
        self.cpus_per_worker = cpus_per_worker

    def _import(self):
        try:
            import ray
        except ImportError:
            raise RayUnavailable(f"--ray {self.address}: Ray is not installed; {RAY_HINT} (or "
                                 "run without --ray)") from None
        return ray

    def _ray(self):
        ray = self._import()
        if not ray.is_initialized():
            _ACTORS.clear()  # a new cluster (or the first): none of its workers exist yet
            _RECIPES.clear()
            settings = {"include_dashboard": False, "logging_level": "ERROR",
                        "log_to_driver": False}
            try:
                if self.address == "local":
                    ray.init(**settings)
                else:
                    ray.init(address=self.address, **settings)
            except ConnectionError as error:  # no cluster there (ray's own message says why)
                raise RayUnavailable(
                    f"--ray {self.address}: no Ray cluster could be reached ({error}). Start one "
                    "(ray start --head), give its head's address, or use --ray local (a Ray "
                    "instance on this machine)") from None
        return ray

    def check(self) -> None:
        """Fail now, before any work, where this pool could not run: Ray not installed, or the
        cluster it joins not reachable (``local`` starts its instance when work needs it)."""
        self._import()
        if self.address == "local":
            return
        head = self.address.removeprefix("ray://")
        host, _, port = head.rpartition(":")
        if host and port.isdigit():  # Ray waits minutes for a head that is not there: not us
            try:
                socket.create_connection((host, int(port)), timeout=_REACH_TIMEOUT_S).close()
            except OSError as error:
                raise RayUnavailable(
                    f"--ray {self.address}: the Ray head cannot be reached ({error}). Check the "
                    "address and that the cluster is up (ray start --head on it), or use --ray "
                    "local (a Ray instance on this machine)") from None
        self._ray()

    def _actors(self) -> list:
        """This process's workers on the cluster: started once, then kept (one set serves every
        stage, so no stage waits for another's CPUs and each network loads once per worker)."""
        ray = self._ray()
        key = (self.address, self.workers, self.cpus_per_worker)
        if key not in _ACTORS:
            resources = ray.cluster_resources()
            gpus = int(resources.get("GPU", 0))
            count = self.workers or gpus or max(1, int(resources.get("CPU", 1)
                                                       // self.cpus_per_worker))
            actor = ray.remote(num_cpus=self.cpus_per_worker, num_gpus=1 if gpus else 0,
                               max_restarts=-1, max_task_retries=-1)(_Worker)
            _ACTORS[key] = [actor.remote() for _ in range(count)]
        return _ACTORS[key]

    def _run(self, recipe: Callable[[], Any], key: tuple, method: str, chunks: Iterable[tuple]
             ) -> Iterator[tuple[int, Any]]:
        """``(chunk number, result)`` of ``component.method(*chunk)`` for every chunk, in the
        order they finish (``component``: what ``recipe`` builds on each worker, once per
        ``key``); two chunks in flight per worker."""
        ray = self._ray()
        actors = self._actors()
        if key not in _RECIPES:
            _RECIPES[key] = ray.put(recipe)  # shipped to the cluster once
        shipped = [_RECIPES[key]]
        queue = enumerate(chunks)  # drawn as workers free up: chunks may be made as they go
        pending: dict = {}

        def submit(actor) -> None:
            for number, chunk in queue:
                pending[actor.call.remote(key, shipped, method, *chunk)] = (number, actor)
                RayPool.chunks_sent += 1
                return

        for actor in actors:
            submit(actor)
            submit(actor)
        while pending:
            (ready,), _ = ray.wait(list(pending), num_returns=1)
            number, actor = pending.pop(ready)
            result = ray.get(ready)
            submit(actor)
            yield number, result

    def map_chunks(self, stage, paths: Sequence[str], items: Sequence, size: int
                   ) -> Iterator[tuple[list[int], np.ndarray, list[str]]]:
        """A cached stage's batches computed on the workers, chunk by chunk (indices into
        ``paths``)."""
        starts = range(0, len(paths), size)
        chunks = [(list(paths[s:s + size]), list(items[s:s + size])) for s in starts]
        work = self._run(stage.worker(), ("stage", type(stage).__name__, stage.key()),
                         "compute_all", chunks)
        for number, (indices, rows, errors) in work:
            yield [starts[number] + i for i in indices], rows, errors

    def map_pairs(self, scorer: Callable[[], Any], keypoints: Sequence, pairs: np.ndarray,
                  ransac: bool, size: int) -> Iterator[tuple[np.ndarray, dict[str, np.ndarray]]]:
        """Pair scores computed on the workers (``scorer``: the recipe of a
        :class:`~wildreid.matching.MatchingWorker`): ``(rows of pairs, scores)`` per chunk of
        ``size`` pairs, each chunk shipped with just the keypoints its pairs use."""
        from wildreid.stage import take

        def chunks() -> Iterator[tuple]:  # read as they are sent: memory stays bounded
            for start in range(0, len(pairs), size):
                part = pairs[start:start + size]
                used, local = np.unique(part, return_inverse=True)
                yield take(keypoints, used), local.reshape(part.shape), ransac

        key = ("pairs", *(repr(a) for a in getattr(scorer, "args", ())),
               *(f"{k}={v!r}" for k, v in sorted(getattr(scorer, "keywords", {}).items())))
        for number, scores in self._run(scorer, key, "score", chunks()):
            yield np.arange(number * size, min(len(pairs), (number + 1) * size)), scores
