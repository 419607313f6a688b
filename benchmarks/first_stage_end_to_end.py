"""The first stage end to end: one local pipeline run on a protocol of nyala-lion with each first
stage at one shortlist size, against every database photo of the species (``all``).

    python benchmarks first-stage-end-to-end --species nyala --protocol B --local aliked-nn
        --shortlist 150 --first-stage cosine|vlad|selection|all [--pair-score inliers]
        [--cascade 10] [--cache-dir /tmp/first-stage-cache]

``--local aliked-nn,aliked --cascade 10``: the cascade (``aliked-nn`` scores every pair of the
shortlist, LightGlue each query's best 10 by it, with ``matches@0.5``).

``cosine``: the global cosine (``CosineShortlist``); ``vlad``: the cosine plus the cosine of VLADs
of the matcher's own keypoints (``VladShortlist``); ``selection``: per species the one of the two
that finds the individual more often on pseudo-splits of the database (``ShortlistSelection``);
``all``: no shortlist. The identifier is fitted on the protocol's database photos of the species
and asked its queries; the time is the fit and the queries with the cache given (global
descriptors, regions and keypoints warm: what the first stage changes is the matching). Writes
``benchmarks/results/first-stage-e2e-<species>-<protocol>-<local>-<first stage>-<size>-cpu-<date>.json``
with the pairs matched (queries' and calibration's), seconds, top-1 and BAKS (closed set, B) or
the task's score (A), what the selection measured and chose, and every query's top-5 answers.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd
from common import DEFAULT_BENCH, write_cpu_result

from wildreid.data import NEW_INDIVIDUAL, load_dataset
from wildreid.metrics import evaluate
from wildreid.pipeline import Identifier
from wildreid.rerank import LocalReranking
from wildreid.shortlist import CosineShortlist, ShortlistSelection, VladShortlist

#: Each protocol's metadata and solution files.
PROTOCOLS = {"A": ("metadata.csv", "solution.csv"),
             "B": ("closedset_metadata.csv", "closedset_solution.csv")}


def first_stage(name: str, size: int | None):
    return {"cosine": CosineShortlist(), "vlad": VladShortlist(),
            "selection": ShortlistSelection(size=size or 100), "all": None}[name]


def shortlist_recall(pairs: pd.DataFrame, of_species: dict[str, pd.DataFrame],
                     truth: pd.Series) -> dict[str, float]:
    """Of the queries whose individual the database holds, the share whose matched pairs (the
    first stage's shortlist) hold a photo of it, and one of its orientation where the database
    has such a photo."""
    database, queries = of_species["database"], of_species["query"]
    identity = database["identity"].astype(str).to_numpy()
    views = (database["orientation"] if "orientation" in database else
             pd.Series([None] * len(database))).to_numpy(object)
    query_views = (queries["orientation"] if "orientation" in queries else
                   pd.Series([None] * len(queries))).to_numpy(object)
    listed = pairs.groupby("first")["second"].apply(np.asarray)
    found, facing = [], []
    for row, image_id in enumerate(queries["image_id"]):
        own = identity == str(truth.get(image_id))
        if not own.any():
            continue  # an individual the database lacks: nothing to find
        shortlisted = listed.get(row, np.zeros(0, np.int64))
        found.append(own[shortlisted].any())
        same_view = own & (views == query_views[row])
        facing.append((same_view if same_view.any() else own)[shortlisted].any())
    return {"same_individual": float(np.mean(found)) if found else None,
            "same_orientation": float(np.mean(facing)) if facing else None,
            "queries": len(found)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--species", required=True)
    parser.add_argument("--protocol", choices=tuple(PROTOCOLS), default="B")
    parser.add_argument("--bench", type=Path, default=DEFAULT_BENCH)
    parser.add_argument("--local", default="aliked-nn")
    parser.add_argument("--keypoints-on", default="animal")
    parser.add_argument("--pair-score", default=None)
    parser.add_argument("--cascade", type=int, default=None)
    parser.add_argument("--shortlist", type=int, default=150)
    parser.add_argument("--first-stage", choices=("cosine", "vlad", "selection", "all"),
                        required=True)
    parser.add_argument("--cache-dir", type=Path, default=Path("/tmp/first-stage-cache"))
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    arguments = parser.parse_args()
    metadata_file, solution_file = PROTOCOLS[arguments.protocol]
    dataset = load_dataset(arguments.bench, metadata_file)
    of_species = {part: frame[frame["species"] == arguments.species].reset_index(drop=True)
                  for part, frame in (("database", dataset.database), ("query", dataset.query))}
    size = None if arguments.first_stage == "all" else arguments.shortlist
    settings = {"features": tuple(arguments.local.split(",")), "shortlist": size,
                "cascade": arguments.cascade,
                "keypoints_on": arguments.keypoints_on,
                "first_stage": first_stage(arguments.first_stage, size)}
    if arguments.pair_score:
        settings["pair_score"] = arguments.pair_score
    identifier = Identifier(device="cpu", cache_dir=arguments.cache_dir,
                            reranking=LocalReranking(**settings, keep_pair_scores=True))
    started = time.perf_counter()
    identifier.fit(of_species["database"])
    fitted = time.perf_counter() - started
    candidates = identifier.predict_candidates(of_species["query"], k=5)
    answers = identifier.decide(candidates)
    seconds = time.perf_counter() - started
    reranking = identifier.reranking_
    solution = pd.read_csv(arguments.bench / solution_file, dtype=str)
    solution = solution[solution["image_id"].isin(of_species["query"]["image_id"])]
    metadata = pd.read_csv(arguments.bench / metadata_file, dtype=str)
    if arguments.protocol == "B":  # closed set: the best candidate is the answer
        answers = candidates[candidates["rank"] == 1][["image_id", "identity"]]
    scores = evaluate(answers, solution, metadata, candidates)
    species = scores["species"][arguments.species]
    stage = reranking.first_stage_
    recall = shortlist_recall(reranking.scoring_.pair_tables["query pairs"], of_species,
                              solution.set_index("image_id")["identity"])
    row = {"species": arguments.species, "protocol": arguments.protocol,
           "first_stage": arguments.first_stage, "shortlist": size,
           "database": len(of_species["database"]), "queries": len(of_species["query"]),
           "query_pairs": int(len(of_species["query"]) * min(
               size or len(of_species["database"]), len(of_species["database"]))),
           "calibration_pairs": int(reranking.calibration_pairs_),
           "fit_s": round(fitted, 1), "seconds": round(seconds, 1),
           "shortlist_recall": recall, "top1": scores.get("closed_set_top1"), "baks": species["baks"],
           "score": species["score"], "known_queries": species["known_queries"],
           "chosen": getattr(stage, "chosen_", None), "recall": getattr(stage, "recall_", None),
           "selection_s": round(getattr(stage, "seconds_", 0.0), 1),
           "answers": candidates[["image_id", "rank", "identity", "score"]].to_dict("list"),
           "new_individual": NEW_INDIVIDUAL}
    print({key: value for key, value in row.items() if key != "answers"})
    matchers = arguments.local.replace(",", "+") + (
        f"-cascade{arguments.cascade}" if arguments.cascade else "")
    write_cpu_result(arguments.out, f"first-stage-e2e-{arguments.species}-{arguments.protocol}-"
                     f"{matchers}-{arguments.first_stage}-{size or 'all'}",
                     {"settings": {key: str(value) for key, value in settings.items()}}, [row])


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
