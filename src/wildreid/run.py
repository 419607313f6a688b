"""A run of ``identify`` as one call (``identify_dataset``): the dataset loaded, the identifier
fitted on its database, the queries answered, and the run folder written — ``submission.csv``,
``submission.candidates.csv`` and ``run.json`` — which the CLI, the report and ``evaluate`` share."""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import pandas as pd

from wildreid.defaults import DEFAULT_CACHE_DIR, DEFAULT_MODEL

RUN_FILE = "run.json"


class Run(NamedTuple):
    """What :func:`identify_dataset` did: the dataset, the fitted identifier, the submission
    (``image_id, identity, score, species``) and where the candidates were written."""

    dataset: object
    identifier: object
    submission: pd.DataFrame
    candidates: Path


def write_run_info(folder: Path, info: dict) -> Path:
    """``run.json`` beside a submission: what the report needs to find the images again."""
    path = Path(folder) / RUN_FILE
    path.write_text(json.dumps(info, indent=2, default=str))
    return path


def read_run_info(folder: Path) -> dict:
    """The ``run.json`` of a run folder (``FileNotFoundError`` naming it when absent)."""
    path = Path(folder) / RUN_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; is {folder} the folder of an identify run "
                                "(identify --output FOLDER/submission.csv)?")
    return json.loads(path.read_text())


def parse_threshold(value: str) -> str | float | None:
    """``--threshold``: ``auto``, ``none`` (closed set) or a number."""
    if value == "auto":
        return "auto"
    if value == "none":
        return None
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number):  # nan would answer new_individual to every query, silently
        raise ValueError(f"threshold {value!r}: use 'auto', 'none' (closed set) or a finite "
                         "number such as 0.6")
    return number


def identify_dataset(data_dir: Path, metadata: Path | None = None, model: str = DEFAULT_MODEL,
                     weights: Path | None = None, output: Path = Path("submission.csv"),
                     candidates: Path | None = None, device: str = "auto", threshold: str = "auto",
                     top_k: int = 5, aggregation: str = "max", batch_size: int = 64,
                     cache_dir: Path | None = DEFAULT_CACHE_DIR, progress: bool = True,
                     isolation: str = "none", segmenter_weights: Path | None = None,
                     preset: str = "fast", shortlist: int | None = 100,
                     local: Sequence[str] | None = None, reranking: dict | None = None,
                     wildlife_dataset: str | None = None,
                     cluster_new: bool = False, ray: str | None = None,
                     budget: float | None = None) -> Run:
    """Identify every query of a dataset and write the run folder (``output``'s): the
    submission, the candidates CSV and ``run.json`` (what the report, ``evaluate`` and a rerun
    read). ``local``: matchers replacing the preset's (``()``: none). ``reranking``: settings of
    the local re-ranking (:class:`~wildreid.rerank.LocalReranking`'s parameters, the settings
    file's ``[reranking]`` table) over the preset's. The accurate preset with no ``local`` (nor
    ``cascade``) chooses each species' pipeline on its database within ``budget`` seconds
    (:class:`~wildreid.selection.PipelineSelection`; ``None``: the default budget for the
    dataset's size). Returns a :class:`Run`."""
    from wildreid.data import load_dataset
    from wildreid.distributed import RayNotNeeded, RayPool
    from wildreid.isolation import parse_isolation
    from wildreid.pipeline import Identifier
    from wildreid.rerank import LocalReranking, preset_reranking

    if ray is not None:  # before any work: not after minutes of it
        RayPool(ray).check()
        chunks_before = RayPool.chunks_sent
    # What the user set of the local re-ranking, over the preset's (and over each candidate's
    # when the preset chooses).
    named = {"shortlist": shortlist, **(reranking or {})}
    cascade = named.get("cascade")
    # The accurate preset chooses its matchers per species unless they are named.
    select = preset == "accurate" and local is None and cascade is None
    preset_local = preset_reranking(preset)
    matchers = tuple(local) if local is not None else tuple((preset_local or {}).get(
        "features", ()))
    if cascade is not None and len(matchers) < 2:
        raise ValueError(f"cascade needs two or more local matchers (the first scores every "
                         f"pair), not {matchers or 'none'}")

    dataset = load_dataset(data_dir, metadata, wildlife_dataset=wildlife_dataset)
    if dataset.query.empty:
        raise ValueError(f"{dataset.source}: no query images (split == 'query') to identify")
    from wildreid.models import parse_models

    settings = dict(model=parse_models(model), weights=weights,
                    threshold=parse_threshold(threshold), aggregation=aggregation, device=device,
                    batch_size=batch_size, cache_dir=cache_dir, progress=progress,
                    isolation=parse_isolation(isolation), segmenter_weights=segmenter_weights,
                    cluster_new=cluster_new, ray=ray)
    if select:
        from wildreid.selection import MENU, PipelineSelection, with_settings

        # Where keypoints go is a candidate of the menu, unless the user named it.
        menu = (with_settings(MENU, keypoints_on=named.pop("keypoints_on"))
                if "keypoints_on" in named else MENU)
        shared = LocalReranking(**{"first_stage": preset_local.get("first_stage"), **named})
        identifier = PipelineSelection(menu, settings=settings, reranking=shared,
                                       budget=budget, log=_say if progress else None).fit(
                                           dataset.database, dataset.query)
    else:
        shared = (LocalReranking(**{**(preset_local or {}), **named, "features": matchers})
                  if matchers else LocalReranking(**named))
        identifier = Identifier(**settings, reranking=shared if matchers else None).fit(
            dataset.database)
    ranked, features = identifier.candidates_and_descriptors(dataset.query, k=top_k)
    submission = identifier.decide(ranked)
    if cluster_new:  # grouped on the descriptors the candidates were ranked on
        submission = identifier.group_new(dataset.query, submission, features)
    if ray is not None and RayPool.chunks_sent == chunks_before:
        warnings.warn(f"--ray {ray}: every row this run needed came from the cache and nothing "
                      "else was computed on workers, so Ray was not needed", RayNotNeeded,
                      stacklevel=2)
    output.parent.mkdir(parents=True, exist_ok=True)
    submission[["image_id", "identity"]].to_csv(output, index=False)
    candidates = candidates or output.with_name(output.stem + ".candidates.csv")
    ranked.to_csv(candidates, index=False, float_format="%.5f")
    # What the report needs to draw matches again: the matchers, where keypoints were kept.
    configuration = {"max_keypoints": shared.max_keypoints, "long_side": shared.long_side,
                     "mirror": shared.mirror}
    if select:
        # Every matcher some species runs (which one each: "chosen").
        configuration["local"] = list(dict.fromkeys(
            name for fitted in identifier.identifiers_.values() if fitted.reranking is not None
            for name in fitted.reranking.features))
        configuration["selection"] = identifier.summary()
        configuration["chosen"] = {str(name): _chosen(fitted)
                                   for name, fitted in identifier.identifiers_.items()}
        configuration["photos_without_keypoints"] = {
            "database": sum(fitted.reranking_.database_without_keypoints_
                            for fitted in identifier.identifiers_.values()
                            if fitted.reranking_ is not None),
            "query": _without_keypoints(ranked)}
    else:
        configuration.update(_chosen(identifier))
    if not select and identifier.reranking_ is not None:
        # Photos a detector found nothing on are data, judged by the cosine alone: counted.
        # (the database's among the photos its calibration matched)
        configuration["photos_without_keypoints"] = {
            "database": identifier.reranking_.database_without_keypoints_,
            "query": _without_keypoints(ranked)}
    write_run_info(output.parent, {
        "data_dir": str(Path(data_dir).resolve()), "metadata": str(metadata) if metadata else None,
        "wildlife_dataset": wildlife_dataset,
        "model": model, "preset": preset, "submission": output.name, **configuration,
        "shortlist": shortlist,
        "candidates": str(Path(candidates).resolve()),
        # Per species, and the pooled one (for species without their own) apart: JSON keys are
        # strings, and a species may be called anything.
        "thresholds": {str(k): v for k, v in identifier.decision_.thresholds.items()
                       if k is not None},
        "default_threshold": identifier.decision_.thresholds.get(None),
        "cluster_new": cluster_new,
        **({"grouping": {str(k): {"linkage": method, "threshold": cut,
                                  "pseudo_unknown_f1": identifier.grouping_.quality.get(k)}
                         for k, (method, cut) in identifier.grouping_.cuts.items()}}
           if cluster_new else {})})
    return Run(dataset, identifier, submission, Path(candidates))


def _say(message: str) -> None:
    """A line on the terminal's error stream, as the progress bars write (markup read as text)."""
    from rich.console import Console

    Console(stderr=True, markup=False, highlight=False).print(message)


def _without_keypoints(ranked: pd.DataFrame) -> int:
    """Queries a local detector found no keypoint on (judged by the cosine alone)."""
    if "query_keypoints" not in ranked.columns:
        return 0
    return int((ranked.drop_duplicates("image_id")["query_keypoints"] == 0).sum())


def _chosen(identifier) -> dict:
    """A fitted identifier's local settings per species (key null: the species a setting does
    not name), for ``run.json``; its matchers (none: the cosine alone)."""
    reranking = identifier.reranking_
    if reranking is None:
        return {"local": []}
    return {"local": list(reranking.features), "local_cascade": reranking.cascade,
            "keypoints_on": reranking.keypoints_on_,
            "fused": {k: list(v) for k, v in reranking.fusion_.names.items()},
            "orientation": reranking.orientation_, "pair_score": reranking.pair_score_,
            "local_aggregation": reranking.aggregation_,
            "fusion_rule": reranking.fusion_rule_,
            "cascade_pair_score": reranking.cascade_pair_score_,
            "first_stage": _first_stage(reranking.first_stage_)}


def _first_stage(stage) -> dict:
    """The first stage for ``run.json``: its class and, where it chose per species
    (:class:`~wildreid.shortlist.ShortlistSelection`), the choice and each candidate's recall
    with its gain ± standard error."""
    found = {"name": type(stage).__name__}
    if hasattr(stage, "chosen_"):
        found.update(chosen={str(key): name for key, name in stage.chosen_.items()},
                     recall={str(key): {name: {what: None if value != value else value
                                               for what, value in figures.items()}
                                        for name, figures in measured.items()}
                             for key, measured in stage.recall_.items()})  # NaN: none
    return found
