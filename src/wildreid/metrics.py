"""Scoring exactly as AnimalCLEF 2025 (wildlife-datasets' BAKS and BAUS), plus diagnostics.

* BAKS: mean over known true identities of the share of their queries named correctly
  (``new_individual`` for a known animal is wrong).
* BAUS: mean over unknown true identities (absent from the database) of the share of their queries
  answered ``new_individual``.
* Score of a species: sqrt(BAKS x BAUS); the AnimalCLEF score is the mean over species. A species
  whose queries are all known (or all unknown) has no score; the mean skips it.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import precision_recall_fscore_support

from wildreid.data import DOCUMENTED_COLUMNS, NEW_INDIVIDUAL, canonical_columns, list_examples
from wildreid.grouping import grouping_scores, is_new, is_proposed


class SubmissionError(ValueError):
    """A submission that cannot be scored; the message lists every problem."""


def _balanced_share(groups: np.ndarray, hits: np.ndarray) -> float:
    """Mean over groups of the mean of ``hits`` within the group (nan without groups)."""
    if len(groups) == 0:
        return math.nan
    return float(pd.Series(hits, dtype=float).groupby(groups).mean().mean())


def baks(y_true, y_pred, unknown_identities) -> float:
    y_true, y_pred = np.asarray(y_true, dtype=object), np.asarray(y_pred, dtype=object)
    known = ~np.isin(y_true, list(unknown_identities))
    return _balanced_share(y_true[known], y_pred[known] == y_true[known])


def baus(y_true, y_pred, unknown_identities) -> float:
    y_true, y_pred = np.asarray(y_true, dtype=object), np.asarray(y_pred, dtype=object)
    unknown = np.isin(y_true, list(unknown_identities))
    return _balanced_share(y_true[unknown], y_pred[unknown] == NEW_INDIVIDUAL)


def geometric_score(baks_value: float, baus_value: float) -> float:
    return math.sqrt(baks_value * baus_value) if not (
        math.isnan(baks_value) or math.isnan(baus_value)) else math.nan


def threshold_curve(true_identity, top_identity, top_score, is_unknown,
                    thresholds: np.ndarray | None = None) -> pd.DataFrame:
    """BAKS, BAUS and their geometric mean for each threshold (answer ``new_individual`` below it).

    Used to fit thresholds on pseudo-queries, to find the best threshold in hindsight in
    benchmarks, and to draw threshold curves.
    """
    true_identity = np.asarray(true_identity, dtype=object)
    top_score = np.asarray(top_score, dtype=np.float64)
    is_unknown = np.asarray(is_unknown, dtype=bool)
    named_right = (np.asarray(top_identity, dtype=object) == true_identity) & ~is_unknown
    if thresholds is None:
        finite = top_score[np.isfinite(top_score)]
        thresholds = np.unique(np.quantile(finite, np.linspace(0, 1, 201))) if len(finite) else []
        thresholds = np.concatenate([[-np.inf], thresholds, [np.inf]])
    thresholds = np.asarray(thresholds, dtype=np.float64)

    def balanced_weights(mask: np.ndarray) -> np.ndarray:
        weights = np.zeros(len(mask))
        if mask.any():
            groups = pd.Series(true_identity[mask])
            weights[mask] = 1.0 / groups.map(groups.value_counts()).to_numpy() / groups.nunique()
        return weights

    known_weight = balanced_weights(~is_unknown)
    unknown_weight = balanced_weights(is_unknown)
    accepted = top_score[None, :] >= thresholds[:, None]  # thresholds x queries
    baks_curve = (accepted & named_right).astype(float) @ known_weight
    baus_curve = (~accepted).astype(float) @ unknown_weight
    if not (~is_unknown).any():
        baks_curve[:] = np.nan
    if not is_unknown.any():
        baus_curve[:] = np.nan
    return pd.DataFrame({"threshold": thresholds, "baks": baks_curve, "baus": baus_curve,
                         "score": np.sqrt(baks_curve * baus_curve)})


def best_threshold(curve: pd.DataFrame) -> tuple[float, float]:
    """(threshold, score) at the middle of the best-scoring plateau of a threshold curve."""
    scores = curve["score"].to_numpy()
    if np.all(np.isnan(scores)):
        return -math.inf, math.nan
    best = np.flatnonzero(scores >= np.nanmax(scores) - 1e-12)
    # Maxima need not be contiguous: the median of all of them can fall in a valley between two
    # plateaus. Take the widest plateau (the first of equally wide ones), then its middle.
    runs = np.split(best, np.flatnonzero(np.diff(best) > 1) + 1)
    widest = max(runs, key=len)
    threshold = curve["threshold"].to_numpy()[widest]
    finite = threshold[np.isfinite(threshold)]
    middle = float(np.median(finite)) if len(finite) else float(threshold[0])
    return middle, float(np.nanmax(scores))


#: Columns each input needs; names are read in any letter case, as in a dataset's metadata.
_NEEDED = {"submission": ("image_id", "identity"), "solution": ("image_id", "identity"),
           "metadata": ("image_id", "identity", "split"),
           "candidates": ("image_id", "rank", "identity")}
_KNOWN_COLUMNS = (*DOCUMENTED_COLUMNS, "rank", "score")


def _read(frame_or_path, what: str) -> tuple[pd.DataFrame, str, list[str]]:
    """The ``what`` input (a DataFrame or CSV path) with its known columns in lower case, the
    name that messages give it, and its problems: columns missing or ambiguous, repeated ids."""
    if isinstance(frame_or_path, pd.DataFrame):
        frame, name = frame_or_path, what
    else:
        path = Path(frame_or_path)
        name = str(path)
        if not path.is_file():
            raise SubmissionError(f"{path}: {what} file not found")
        try:
            frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
            raise SubmissionError(f"{path}: {what} is not a readable CSV ({error})") from None
    columns, problems = canonical_columns(frame.columns, _KNOWN_COLUMNS)
    frame = frame.set_axis(columns, axis=1)
    missing = [c for c in _NEEDED[what] if c not in columns]
    if missing:
        problems.append(f"{what} lacks column(s) {', '.join(missing)}; it needs "
                        f"{', '.join(_NEEDED[what])}")
    elif what != "candidates":  # candidates list several ranks per image
        # A repeated query would count twice in its identity's share (and could disagree).
        repeated = frame["image_id"][frame["image_id"].duplicated()].astype(str).unique()
        if len(repeated):
            problems.append(f"{len(repeated)} image_id(s) appear more than once: "
                            f"{list_examples(repeated)}; keep one row per image")
    return frame, name, problems


def _refuse(problems: dict[str, list[str]]) -> None:
    """One :class:`SubmissionError` listing every problem, under the name of its input."""
    blocks = [f"{name}: {len(found)} problem(s):\n  - " + "\n  - ".join(found)
              for name, found in problems.items() if found]
    if blocks:
        raise SubmissionError("\n".join(blocks))


def _check_submission(submission: pd.DataFrame, solution: pd.DataFrame,
                      database_identities: set[str]) -> list[str]:
    """Problems of a submission against the solution and the database."""
    problems = []
    missing = sorted(set(solution["image_id"]) - set(submission["image_id"]))
    if missing:
        problems.append(f"{len(missing)} query image_id(s) without an answer: {list_examples(missing)}")
    extra = sorted(set(submission["image_id"]) - set(solution["image_id"]))
    if extra:
        problems.append(f"{len(extra)} image_id(s) that are not queries: {list_examples(extra)}")
    answers = set(submission["identity"]) - database_identities - {NEW_INDIVIDUAL}
    answers = {a for a in answers if not is_proposed([a])[0]}
    if answers:
        problems.append(f"{len(answers)} identity answer(s) not in the database and not "
                        f"'{NEW_INDIVIDUAL}' (or a proposed '{NEW_INDIVIDUAL}_<n>'): "
                        f"{list_examples(sorted(map(str, answers)))}")
    return problems


def evaluate(submission, solution, metadata, candidates=None) -> dict:
    """Score a submission. Inputs are DataFrames or CSV paths; ``metadata`` gives each query's
    species and the database identities. ``candidates`` (image_id, rank, identity, score) adds
    closed-set top-1/top-5 that ignore the new_individual decision. Raises
    :class:`SubmissionError` listing every problem of the inputs."""
    inputs = {"submission": submission, "solution": solution, "metadata": metadata}
    frames, names, problems = {}, {}, {}
    for what, given in inputs.items():
        frames[what], names[what], found = _read(given, what)
        problems.setdefault(names[what], []).extend(found)
    _refuse(problems)
    submission, solution = frames["submission"], frames["solution"]
    metadata = frames["metadata"].astype({"image_id": str})
    problems = {names["submission"]: []}
    if "species" in metadata.columns and (
            metadata["species"].fillna("").astype(str).str.strip() != "").any():
        # Queries absent from a metadata with species would be pooled into one made-up species
        # (without species, all queries are pooled anyway and the database rows are enough).
        absent = sorted(set(solution["image_id"].astype(str)) - set(metadata["image_id"]))
        if absent:
            problems[names["metadata"]] = [
                f"{len(absent)} query image_id(s) of the solution are not in it, so their species "
                f"is unknown: {list_examples(absent)}; give the dataset's metadata.csv with its "
                "query rows"]
    else:
        metadata = metadata.assign(species="all")
    database = metadata[metadata["split"] == "database"]
    database_identities = set(database["identity"].astype(str))
    problems[names["submission"]] = _check_submission(submission, solution, database_identities)
    _refuse(problems)
    species = metadata.set_index("image_id")["species"]

    table = solution[["image_id", "identity"]].rename(columns={"identity": "truth"}).merge(
        submission[["image_id", "identity"]].rename(columns={"identity": "proposed"}),
        on="image_id")
    # A proposed new individual (new_individual_<n>) is a new_individual answer for BAKS/BAUS.
    table["answer"] = np.where(is_new(table["proposed"]), NEW_INDIVIDUAL, table["proposed"])
    table["species"] = table["image_id"].map(species).replace("", np.nan)
    routed = None
    if candidates is not None:
        candidates, name, found = _read(candidates, "candidates")
        _refuse({name: found})
        if "species_source" in candidates.columns:  # queries the species router gave a species
            best = candidates[candidates["rank"].astype(int) == 1]
            routed = best[best["species_source"] == "predicted"].set_index("image_id")
            # Scored in the species they were routed to, when the metadata does not say.
            table["species"] = table["species"].fillna(table["image_id"].map(routed["species"]))
    table["species"] = table["species"].fillna("all")
    table["unknown"] = ~table["truth"].isin(database_identities) | (table["truth"] == NEW_INDIVIDUAL)
    unknown_ids = set(table.loc[table["unknown"], "truth"])

    per_species = {}
    for name_, group in table.groupby("species"):
        baks_value = baks(group["truth"], group["answer"], unknown_ids)
        baus_value = baus(group["truth"], group["answer"], unknown_ids)
        known = group[~group["unknown"]]
        per_species[name_] = {
            "baks": baks_value, "baus": baus_value,
            "score": geometric_score(baks_value, baus_value),
            "queries": len(group), "known_queries": len(known),
            "unknown_queries": int(group["unknown"].sum()),
            "known_top1": float((known["answer"] == known["truth"]).mean()) if len(known) else math.nan,
        }
    scores = [s["score"] for s in per_species.values() if not math.isnan(s["score"])]
    truth = np.where(table["unknown"], NEW_INDIVIDUAL, table["truth"])
    precision, recall, f1, _ = precision_recall_fscore_support(
        truth, table["answer"], average="macro", zero_division=0)
    known = table[~table["unknown"]]
    result = {
        "score": float(np.mean(scores)) if scores else math.nan,
        "species": per_species,
        "accuracy": float((truth == table["answer"]).mean()),
        "macro_precision": float(precision), "macro_recall": float(recall),
        "macro_f1": float(f1),
        "known_top1": float((known["answer"] == known["truth"]).mean()) if len(known) else math.nan,
        "queries": len(table),
    }
    if is_proposed(table["proposed"]).any():
        result["new_individuals"] = grouping_quality(table)
    if candidates is not None:
        result.update(_closed_set(candidates, known))
    if routed is not None and len(routed):
        result["species_router"] = _router_quality(routed, table, species, database)
    return result


def _router_quality(routed: pd.DataFrame, table: pd.DataFrame, given: pd.Series,
                    database: pd.DataFrame) -> dict:
    """How often the species router named the right species, where the truth is known: the
    metadata's species of the query, else the species of its true (database) individual."""
    species_of = database.drop_duplicates("identity").set_index("identity")["species"]
    truth = table.set_index("image_id")["truth"]
    rows = []
    for image_id, row in routed.iterrows():
        real = given.get(image_id)
        if real is None or pd.isna(real) or str(real).strip() == "":
            real = species_of.get(truth.get(image_id))
        if real is not None and not pd.isna(real):
            rows.append((image_id, str(row["species"]), str(real)))
    wrong = [f"{image_id} ({said}, really {real})" for image_id, said, real in rows if said != real]
    return {"routed_queries": len(routed), "checked": len(rows),
            "accuracy": (1 - len(wrong) / len(rows)) if rows else math.nan,
            "mean_confidence": float(routed["species_confidence"].astype(float).mean()),
            "wrong": wrong}


def grouping_quality(table: pd.DataFrame) -> dict:
    """How well the unknown queries were grouped into proposed new individuals: pairwise
    precision/recall/F1 and adjusted Rand index against their true identities. Each query's
    group is its answer; a plain ``new_individual`` is a group of its own."""
    unknown = table[table["unknown"]]
    groups = [answer if answer != NEW_INDIVIDUAL else f"\0{image_id}"
              for answer, image_id in zip(unknown["proposed"], unknown["image_id"])]
    scores = grouping_scores(unknown["truth"].to_numpy(), groups) if len(unknown) else {}
    proposed = table["proposed"][is_proposed(table["proposed"])]
    return {**scores, "unknown_queries": len(unknown),
            "unknown_individuals": int(unknown["truth"].nunique()),
            "proposed_individuals": int(proposed.nunique()),
            "proposed_with_several_photos": int((proposed.value_counts() > 1).sum())}


def _closed_set(candidates: pd.DataFrame, known: pd.DataFrame) -> dict:
    """Top-1/top-5 of the ranked candidates on known queries, whatever the threshold says."""
    candidates = candidates.astype({"rank": int})
    hits = candidates.merge(known[["image_id", "truth"]], on="image_id")
    hits = hits[hits["identity"] == hits["truth"]].groupby("image_id")["rank"].min()
    rank = known["image_id"].map(hits)
    return {f"closed_set_top{k}": float((rank <= k).mean()) if len(known) else math.nan
            for k in (1, 5)}


# Statistics of a choice made on a development split: the task's score and a paired gain with
# its standard error, shared by the pipeline selection and the first stage's.

#: Gains must exceed this many standard errors for a choice to leave its default (a dearer
#: candidate, another first stage).
STANDARD_ERRORS = 2.0
#: Bootstrap draws of identities behind each standard error.
BOOTSTRAP_DRAWS = 1000


def open_set_score(correct: np.ndarray, identity: np.ndarray, unknown: np.ndarray,
                   closed_set: bool = False) -> float:
    """The task's score of answers (``correct`` per query; ``identity`` its true identity;
    ``unknown``: an identity absent from the database): sqrt(BAKS x BAUS), or BAKS alone for a
    closed set (every query known). BAKS and BAUS are means over identities of the share of
    their queries answered right."""
    known_share = _per_identity(correct[~unknown], identity[~unknown])
    baks = float(known_share.mean()) if len(known_share) else 0.0
    if closed_set:
        return baks
    unknown_share = _per_identity(correct[unknown], identity[unknown])
    baus = float(unknown_share.mean()) if len(unknown_share) else 0.0
    return float(np.sqrt(baks * baus))


def _per_identity(correct: np.ndarray, identity: np.ndarray) -> np.ndarray:
    if len(correct) == 0:
        return np.zeros(0)
    return pd.Series(correct, dtype=float).groupby(identity).mean().to_numpy()


def paired_gain(better: np.ndarray, baseline: np.ndarray, identity: np.ndarray,
                unknown: np.ndarray, closed_set: bool = False, draws: int = BOOTSTRAP_DRAWS,
                seed: int = 0) -> tuple[float, float]:
    """The gain in :func:`open_set_score` of answers ``better`` over ``baseline`` (correct per
    query, the same queries) and its standard error: identities resampled with replacement,
    known and unknown apart, both candidates on each draw (paired)."""
    rng = np.random.default_rng(seed)
    gain = (open_set_score(better, identity, unknown, closed_set)
            - open_set_score(baseline, identity, unknown, closed_set))
    parts = []
    for rows in (~unknown, unknown if not closed_set else np.zeros_like(unknown)):
        if not rows.any():
            parts.append(None)
            continue
        shares = np.stack([_per_identity(answers[rows], identity[rows])
                           for answers in (better, baseline)])  # 2 x identities
        picks = rng.integers(0, shares.shape[1], (draws, shares.shape[1]))
        parts.append(shares[:, picks].mean(axis=2))  # 2 x draws
    known, unknown_draws = parts
    if known is None:
        return gain, float("nan")
    scores = known if closed_set or unknown_draws is None else np.sqrt(known * unknown_draws)
    return gain, float(np.std(scores[0] - scores[1], ddof=1))
