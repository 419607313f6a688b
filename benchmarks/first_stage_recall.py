"""Recall of the individual by the first stage, on a development split of the database.

    python benchmarks/first_stage_recall.py --species nyala [--clusters 64] [--seeds 3]
        [--local sift|aliked] [--keypoints-on image|animal]

For each pseudo-known query of a pseudo-split of the species' development photos (those in the
database of both protocols: no query of either protocol is among them), whether its shortlist of K
reference photos holds a photo of its individual (and, where photos have an orientation, one of
the same orientation), for K = 1 ... 200, by each first stage: the global descriptor's cosine
(EfficientNet-Lite0, what the shortlist is today), the cosine of VLADs of the local descriptors
(``wildreid.vlad``, codebook fitted on the reference photos; SIFT or ALIKED, on the whole photo or
kept on the animal's U²-Net mask), and the two cosines summed. Writes
``benchmarks/results/first-stage-recall-<species>-<clusters>[-<local>-<place>]-cpu-<date>.json``
(no suffix: SIFT on the whole photo, the first study).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from common import DEFAULT_BENCH, DEVELOPMENT_SPLIT, development_database, write_cpu_result

from wildreid.isolation import Isolator
from wildreid.pipeline import Identifier
from wildreid.pseudo_queries import pseudo_split, sightings_of
from wildreid.scorers import LocalScorer, keypoint_regions, orientations
from wildreid.vlad import Vlad

SIZES = (1, 5, 10, 20, 50, 100, 200)


def recall(similarity: np.ndarray, hits: np.ndarray) -> dict[int, float]:
    """Share of queries (rows) with a hit among their K most similar reference photos."""
    order = np.argsort(-similarity, axis=1, kind="stable")
    found = np.take_along_axis(hits, order, axis=1)
    first = np.where(found.any(axis=1), found.argmax(axis=1), np.iinfo(np.int64).max)
    return {size: float(np.mean(first < size)) for size in SIZES}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--species", required=True)
    parser.add_argument("--bench", type=Path, default=DEFAULT_BENCH)
    parser.add_argument("--clusters", type=int, default=64)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--local", choices=("sift", "aliked"), default="sift")
    parser.add_argument("--keypoints-on", choices=("image", "animal"), default="image")
    parser.add_argument("--cache-dir", type=Path, default=Path("/tmp/first-stage-cache"))
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    arguments = parser.parse_args()
    started = time.perf_counter()
    images = development_database(arguments.bench, arguments.species)
    features = Identifier(device="cpu", cache_dir=arguments.cache_dir,
                          progress=False).describe(images)
    extractor = LocalScorer((arguments.local,), 512, 512, device="cpu",
                            cache_dir=arguments.cache_dir, progress=True)
    regions = keypoint_regions(images, arguments.keypoints_on,
                               Isolator(cache_dir=arguments.cache_dir), "regions")
    keypoints = extractor.keypoints(images, regions, arguments.local)[arguments.local]
    descriptors = [k.descriptors for k in keypoints]
    identities = images["identity"].astype(str).to_numpy()
    views = orientations(images)
    results = []
    for seed in range(arguments.seeds):
        split = pseudo_split(identities, np.random.default_rng(seed),
                             sightings=sightings_of(images))
        queries = split.queries[~split.unknown]
        reference = split.reference
        vlad = Vlad(arguments.clusters, seed=seed).fit([descriptors[i] for i in reference])
        vectors = vlad.transform(descriptors)
        cosine = features[queries] @ features[reference].T
        local = vectors[queries] @ vectors[reference].T
        same = identities[queries][:, None] == identities[reference][None, :]
        same_view = same & (views[queries][:, None] == views[reference][None, :]) & (
            views[queries][:, None] != None)  # noqa: E711 (elementwise)
        name = f"vlad-{arguments.local}"
        stages = {"cosine": cosine, name: local, f"cosine+{name}": cosine + local}
        row = {"seed": seed, "queries": len(queries), "reference": len(reference),
               "recall": {name: recall(score, same) for name, score in stages.items()}}
        if same_view.any():
            row["same_orientation_recall"] = {name: recall(score, same_view)
                                              for name, score in stages.items()}
        results.append(row)
        print(seed, {name: round(values[50], 3) for name, values in row["recall"].items()})
    suffix = ("" if (arguments.local, arguments.keypoints_on) == ("sift", "image")
              else f"-{arguments.local}-{arguments.keypoints_on}")
    write_cpu_result(arguments.out,
                     f"first-stage-recall-{arguments.species}-{arguments.clusters}{suffix}",
                     {"species": arguments.species, "split": DEVELOPMENT_SPLIT,
                      "local": arguments.local, "keypoints_on": arguments.keypoints_on,
                      "seconds": round(time.perf_counter() - started, 1)}, results)


if __name__ == "__main__":
    main()
