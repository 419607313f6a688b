"""Development-split evidence for the fixed values of each setting of the local stage.

    python benchmarks/choice_evidence.py DATA --name cats-open [--base sift/animal]
        [--shortlist 50] [--choices pair_score,fusion,orientation,local_aggregation,keypoints_on]
    python benchmarks/choice_evidence.py --nyala-lion lion   # the clean split of ../shared

For each species, the database is carved as the accurate preset carves it
(:func:`wildreid.selection.development_split`; for nyala-lion, from the photos in the database of
both protocols, so neither protocol's queries are seen). The ``base`` pipeline of the menu is fitted
on the reference part with each of the setting's values, every other setting as the library's
defaults leave it; all are scored on the same held-out queries with the task's score, and each
value's paired gain over the default comes with its bootstrap standard error
(:func:`wildreid.selection.paired_gain`). The files of 2026-12-07 also hold ``auto`` (each
setting chosen per species by the fit itself): it never won, and has since gone from the library
(docs/decisions/0001-0005).

Writes ``benchmarks/results/choice-evidence-<name>-<base>-s<shortlist>-cpu-<date>.json`` (never
overwritten); ``benchmarks/results_table.py`` turns every such file into RESULTS.md's table of
the local stage's choices, and the decision records' evidence.
"""

from __future__ import annotations

import argparse
import inspect
import json
import time
from pathlib import Path

import numpy as np
from common import DEFAULT_BENCH, cpu_name, development_database, unused_path
from sklearn.base import clone

from wildreid.data import load_dataset
from wildreid.metrics import paired_gain
from wildreid.per_species import species_keys
from wildreid.pipeline import Identifier
from wildreid.rerank import LocalReranking
from wildreid.selection import MENU, development_split

RESULTS = Path(__file__).resolve().parent / "results"
#: Each setting and the values a user could fix it to.
VALUES = {
    "pair_score": ("confidence_sum", "matches@0.5", "inliers"),
    "fusion": ("all", "local"),
    "orientation": ("any", "same"),
    "local_aggregation": ("max", "top2"),
    "keypoints_on": ("animal", "image"),
    "fusion_rule": ("mean", "logistic"),
}
#: The re-ranking's parameter of each setting, where its name differs.
PARAMETER = {"local_aggregation": "aggregation"}
#: What each choice is when nobody sets it: the library's own defaults, read from it.
DEFAULTS = {choice: inspect.signature(LocalReranking).parameters[
    PARAMETER.get(choice, choice)].default for choice in VALUES}
#: Where the fitted identifier keeps each setting, per species.
RESOLVED = {"pair_score": "pair_score_", "fusion": "fusion_", "orientation": "orientation_",
            "local_aggregation": "aggregation_", "keypoints_on": "keypoints_on_",
            "fusion_rule": "fusion_rule_"}


def resolved(identifier: Identifier, choice: str, species) -> str | None:
    reranking = identifier.reranking_
    found = getattr(reranking, RESOLVED[choice], None) if reranking is not None else None
    if not isinstance(found, dict):
        return None
    value = found.get(species, found.get(None))
    return "+".join(value) if isinstance(value, tuple | list) else value


def finite(value):
    """``value`` with every NaN or infinity as ``None`` (JSON has neither)."""
    if isinstance(value, dict):
        return {key: finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [finite(item) for item in value]
    if isinstance(value, float | np.floating):
        return float(value) if np.isfinite(value) else None
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path, nargs="?")
    parser.add_argument("--nyala-lion", default=None, help="nyala or lion: the clean split of "
                        "../shared's database of both protocols")
    parser.add_argument("--name", default=None)
    parser.add_argument("--base", default="sift/animal",
                        help=f"a local candidate of the menu: {[c.name for c in MENU[1:]]}")
    parser.add_argument("--shortlist", type=int, default=50)
    parser.add_argument("--choices", default=",".join(VALUES))
    parser.add_argument("--queries", type=int, default=200, help="development queries")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "wildreid"))
    arguments = parser.parse_args()
    base = {candidate.name: candidate for candidate in MENU}[arguments.base]
    if arguments.nyala_lion:
        databases = {arguments.nyala_lion: development_database(DEFAULT_BENCH,
                                                                arguments.nyala_lion)}
        name = arguments.name or f"{arguments.nyala_lion}-dev"
    else:
        database = load_dataset(arguments.data).database
        keys = species_keys(database.get("species"), len(database))
        databases = {key: database[keys == key].reset_index(drop=True)
                     for key in dict.fromkeys(keys)}
        name = arguments.name or arguments.data.name
    settings = {"device": arguments.device, "cache_dir": arguments.cache_dir, "progress": False}
    reranking = base.reranking(LocalReranking(shortlist=arguments.shortlist))
    choices = arguments.choices.split(",")
    started = time.perf_counter()
    species_results = {}
    for species, images in databases.items():
        split = development_split(images, arguments.queries)
        if split is None:
            print(f"{species}: too few identities for a development split")
            continue
        has_orientation = images.get("orientation") is not None and \
            images["orientation"].notna().any()
        runs: dict[str, dict] = {}

        def run(label: str, extra: dict, split=split, species=species, runs=runs) -> dict:
            if label in runs:
                return runs[label]
            begun = time.perf_counter()
            try:
                identifier = Identifier(**settings, reranking=clone(reranking).set_params(
                    **{PARAMETER.get(key, key): value for key, value in extra.items()})).fit(
                        split.reference)
            except ValueError as problem:  # a setting this species cannot run with: evidence too
                print(f"{species} {label}: failed: {problem}", flush=True)
                runs[label] = {"score": float("nan"), "correct": None, "failed": str(problem),
                               "seconds": round(time.perf_counter() - begun, 1),
                               "resolved": dict.fromkeys(VALUES)}
                return runs[label]
            answers = identifier.predict(split.queries)["identity"].to_numpy()
            correct, score = split.score(answers)
            runs[label] = {"score": score, "correct": correct,
                           "seconds": round(time.perf_counter() - begun, 1),
                           "resolved": {choice: resolved(identifier, choice, species)
                                        for choice in VALUES}}
            print(f"{species} {label}: {score:.3f} ({runs[label]['seconds']:.0f} s) "
                  f"resolved {runs[label]['resolved']}", flush=True)
            return runs[label]

        default = run("defaults", {})
        evidence = {}
        for choice in choices:
            if choice == "orientation" and not has_orientation:
                evidence[choice] = {"skipped": "no orientation recorded: both values are one"}
                continue
            rows = {}
            # The default: the base pipeline's own value (its keypoints' place), else the
            # library's.
            default_value = base.settings.get(PARAMETER.get(choice, choice), DEFAULTS[choice])
            for value in VALUES[choice]:
                found = default if value == default_value else run(f"{choice}={value}",
                                                                   {choice: value})
                if found["correct"] is None:
                    rows[value] = {"score": None, "gain_over_default": None,
                                   "standard_error": None, "failed": found["failed"],
                                   "seconds": found["seconds"], "resolved": None}
                    continue
                gain, error = paired_gain(found["correct"], default["correct"], split.truth,
                                          split.unknown)
                rows[value] = {"score": found["score"], "gain_over_default": gain,
                               "standard_error": error, "seconds": found["seconds"],
                               "resolved": found["resolved"][choice]}
            evidence[choice] = {"default": default_value, "values": rows}
        species_results[str(species)] = {
            "development": {"reference": len(split.reference), "queries": len(split.queries),
                            "unknown": int(split.unknown.sum()), "dated": split.dated},
            "defaults": {"score": default["score"], "resolved": default["resolved"]},
            "evidence": evidence}
    record = {"benchmark": name, "base": arguments.base, "shortlist": arguments.shortlist,
              "date": time.strftime("%Y-%m-%d"),
              "machine": f"{cpu_name()}, {len(__import__('os').sched_getaffinity(0))} cores",
              "command": "python benchmarks/choice_evidence.py " + " ".join(
                  ([str(arguments.data).replace(str(Path(__file__).resolve().parents[2]) + "/",
                                                "../")] if arguments.data else [])
                  + ([f"--nyala-lion {arguments.nyala_lion}"] if arguments.nyala_lion else [])
                  + [f"--name {name}", f"--base {arguments.base}",
                     f"--shortlist {arguments.shortlist}", f"--choices {arguments.choices}"]),
              "wall_seconds": round(time.perf_counter() - started, 1),
              "species": species_results}
    path = unused_path(RESULTS / f"choice-evidence-{name}-{arguments.base.replace('/', '-')}-"
                                 f"s{arguments.shortlist}-cpu-{record['date']}.json")
    path.write_text(json.dumps(finite(record), indent=1, default=str))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
