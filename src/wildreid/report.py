"""One self-contained HTML report of an identification run: ``wildreid report RUN_DIR``.

A run folder holds what ``wildreid identify --output RUN_DIR/submission.csv`` writes: the
submission, the ranked candidates and ``run.json`` (dataset, model, thresholds). With the true
answers (``--solution``, or ``solution.csv`` beside the dataset's metadata) the report adds the
AnimalCLEF metrics per species, threshold curves, score histograms of known vs unknown queries and
the hardest errors. Plots are matplotlib PNGs and photos JPEG thumbnails, all embedded, so the file
opens offline and can be mailed.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
from PIL import Image

from wildreid.data import NEW_INDIVIDUAL, answers_from_folders, load_dataset
from wildreid.grouping import is_new, is_proposed
from wildreid.images import ImageError, load_image
from wildreid.metrics import evaluate, threshold_curve
from wildreid.run import RUN_FILE


def _confusion(table: pd.DataFrame) -> str:
    """Per species, what happened to known and unknown queries: named right, named wrong (another
    database individual), wrongly new (a known animal answered new_individual), wrongly known
    (an unseen animal given a database name), rightly new."""
    known, new = ~table["unknown"], table["answer"] == NEW_INDIVIDUAL
    outcome = pd.Series("", index=table.index)
    outcome[known & (table["answer"] == table["truth"])] = "named right"
    outcome[known & ~new & (table["answer"] != table["truth"])] = "named wrong"
    outcome[known & new] = "wrongly new"
    outcome[~known & ~new] = "wrongly known"
    outcome[~known & new] = "rightly new"
    columns = ["named right", "named wrong", "wrongly new", "wrongly known", "rightly new"]
    counts = pd.crosstab(table["species"], outcome).reindex(columns=columns, fill_value=0)
    rows = "".join(f"<tr><td>{html.escape(str(name))}</td>"
                   + "".join(f"<td>{int(counts.loc[name, c])}</td>" for c in columns) + "</tr>"
                   for name in counts.index)
    return ("<h2>Known and unknown queries</h2><table><tr><th>species</th>"
            + "".join(f"<th>{c}</th>" for c in columns) + f"</tr>{rows}</table>")


def _proposed_groups(submission: pd.DataFrame, paths: pd.Series, truth: pd.Series | None,
                     database_ids: set[str], quality: dict | None, shown: int = 40) -> str:
    """The proposed new individuals (``--cluster-new``), largest first, each with its photos;
    with the answers, each photo's true individual and the grouping's pairwise scores."""
    proposed = submission[is_proposed(submission["identity"])]
    sizes = proposed["identity"].value_counts(sort=False)
    order = sorted(sizes.index, key=lambda name: (-sizes[name], int(name.rsplit("_", 1)[1])))
    several = [name for name in order if sizes[name] > 1]
    summary = (f"<p>{len(sizes)} proposed for {len(proposed)} queries answered "
               f"{NEW_INDIVIDUAL}: {len(several)} with two photos or more, "
               f"{len(sizes) - len(several)} alone.")
    if quality:
        summary += (f" Against the true individuals of the unknown queries: pairwise precision "
                    f"{_fmt(quality.get('pairwise_precision'))}, recall "
                    f"{_fmt(quality.get('pairwise_recall'))}, F1 {_fmt(quality.get('pairwise_f1'))},"
                    f" adjusted Rand index {_fmt(quality.get('ari'))}.")
    rows = []
    for name in several[:shown]:
        tiles = []
        for image_id in proposed.loc[proposed["identity"] == name, "image_id"]:
            who = ""
            if truth is not None:
                real = str(truth.get(image_id, ""))
                who = (f"<br>really {html.escape(real)}" if real not in database_ids
                       else f"<br>known: {html.escape(real)}")
            tiles.append(f"<div class='candidate'><img src='{_thumbnail(paths[image_id])}'><br>"
                         f"{html.escape(str(image_id))}{who}</div>")
        rows.append(f"<div class='row'><div class='query'><b>{html.escape(name)}</b><br>"
                    f"{sizes[name]} photos</div>{''.join(tiles)}</div>")
    more = (f"<p>{len(several) - shown} more groups not shown.</p>"
            if len(several) > shown else "")
    return f"<h2>Proposed new individuals</h2>{summary}</p>{''.join(rows)}{more}"


#: What the metrics mean, for a reader who is not a machine-learning person.
_METRICS_IN_WORDS = (
    "<p class='words'><b>How to read these numbers.</b> A query is either an animal the database "
    "knows or one it has never seen. <b>BAKS</b> (balanced accuracy on known samples): of the "
    "queries of animals in the database, the share named as the right individual, averaged over "
    "individuals, so that an animal photographed fifty times counts as much as one photographed "
    "twice. <b>BAUS</b> (balanced accuracy on unknown samples): of the queries of animals the "
    "database does not have, the share answered <i>new individual</i>, averaged the same way. "
    "The <b>score</b> is their geometric mean, the square root of BAKS x BAUS: it is high only "
    "when both are, so naming every animal (BAUS 0) or calling every animal new (BAKS 0) both "
    "score 0. <b>Known top-1</b>: how often the first candidate is right for known animals, "
    "whatever the threshold says. The threshold decides between the best candidate and "
    "<i>new individual</i>: its curves below show what a higher or lower one would give.</p>")
#: Query cards per page of a section (the first page open, the others folded).
PAGE = 25


def _paged(cards: list[str]) -> str:
    """``cards`` in pages of :data:`PAGE`, each page a foldable section (the first one open)."""
    pages = [cards[start:start + PAGE] for start in range(0, len(cards), PAGE)]
    return "".join(
        f"<details{' open' if number == 0 else ''}><summary>{number * PAGE + 1}–"
        f"{number * PAGE + len(page)} of {len(cards)}</summary>{''.join(page)}</details>"
        for number, page in enumerate(pages))


def _png(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(figure)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _thumbnail(path: str, size: int = 150) -> str:
    try:
        image = load_image(path)
    except ImageError:
        image = Image.new("RGB", (size, size), (90, 0, 0))
    image.thumbnail((size, size))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def draw_matches(first: Image.Image, second: Image.Image, first_keypoints, second_keypoints,
                 matches: np.ndarray, first_region=None, second_region=None,
                 width: int = 640) -> Image.Image:
    """Two photos side by side at their keypoint resolution, the animal masks outlined in yellow,
    each match a line and a ringed dot at both ends, coloured by its confidence (dark blue for
    the weakest, through green and yellow, to red for the strongest: the turbo scale, which
    stays visible on dark fur and on pale skin alike)."""
    import cv2

    panels = []
    for image, keypoints, region in ((first, first_keypoints, first_region),
                                     (second, second_keypoints, second_region)):
        # The part of the photo the detector saw (the animal's box), at its resolution.
        width, height = image.size
        x0, y0, x1, y1 = (round(f * n) for f, n in zip(keypoints.box, (width, height) * 2))
        shown = image.crop((x0, y0, x1, y1)).resize(keypoints.size, Image.BICUBIC)
        pixels = np.ascontiguousarray(np.asarray(shown)).copy()
        if region is not None and not region.is_whole:
            outline = cv2.resize(region.mask_at(image.size)[y0:y1, x0:x1], keypoints.size,
                                 interpolation=cv2.INTER_NEAREST)
            contours, _ = cv2.findContours(outline, cv2.RETR_EXTERNAL,
                                           cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(pixels, contours, -1, (255, 220, 0), 2)
        panels.append(pixels)
    height = max(p.shape[0] for p in panels)
    canvas = np.zeros((height, panels[0].shape[1] + panels[1].shape[1], 3), np.uint8)
    canvas[:panels[0].shape[0], :panels[0].shape[1]] = panels[0]
    canvas[:panels[1].shape[0], panels[0].shape[1]:] = panels[1]
    offset = panels[0].shape[1]
    scale = cv2.applyColorMap(np.arange(256, dtype=np.uint8)[:, None], cv2.COLORMAP_TURBO)
    for i, j, confidence in matches[np.argsort(matches[:, 2])] if len(matches) else []:
        x0, y0 = first_keypoints.xy[int(i)]
        x1, y1 = second_keypoints.xy[int(j)]
        blue, green, red = scale[int(255 * min(1.0, max(0.0, float(confidence)))), 0]
        colour = (int(red), int(green), int(blue))  # the canvas is RGB, OpenCV's scale BGR
        ends = ((round(x0), round(y0)), (round(x1) + offset, round(y1)))
        cv2.line(canvas, *ends, colour, 1, cv2.LINE_AA)
        for end in ends:  # a dark ring keeps the dot visible on any coat
            cv2.circle(canvas, end, 4, (0, 0, 0), -1, cv2.LINE_AA)
            cv2.circle(canvas, end, 3, colour, -1, cv2.LINE_AA)
    picture = Image.fromarray(canvas)
    picture.thumbnail((width, width))
    return picture


def _jpeg(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


class MatchPanel(NamedTuple):
    """Matches of a query with an identity's best-matching photo: drawn (JPEG data URI; ``""``
    where not drawn), how many keypoints matched, and their summed confidence; ``photo``: that
    photo's image id;
    ``pairs``: each match as ``(x, y)`` in the query photo, ``(x, y)`` in that photo (fractions
    of each photo's width and height) and its confidence, for a viewer that draws them itself."""

    image: str
    matches: int
    strength: float
    photo: str | None = None
    pairs: tuple = ()


def match_panels(info: dict, database: pd.DataFrame, queries: pd.DataFrame,
                 candidates: pd.DataFrame, device: str, cache_dir, drawn: bool = True
                 ) -> dict[tuple[str, str], MatchPanel]:
    """Per (query, candidate identity): the matches with the identity's best image, drawn
    unless ``drawn`` is False (a viewer that draws the points itself needs no picture: no photo
    is decoded, no JPEG encoded)."""
    from wildreid.isolation import Isolator
    from wildreid.local import KeypointExtractor, create_local_features
    from wildreid.matching import create_matcher
    from wildreid.scorers import keypoint_regions

    # The run's first matcher; ALIKED + LightGlue where it ran none (the accurate preset may
    # choose the cosine alone), as the catalog draws the fast preset's matches.
    name = (info.get("local") or ["aliked"])[0]
    features = create_local_features(name, max_keypoints=info.get("max_keypoints", 512),
                                     long_side=info.get("long_side", 512), device=device)
    extractor = KeypointExtractor(features, cache_dir, progress=False)
    matcher = create_matcher(name, device=device)
    isolator = Isolator(cache_dir=cache_dir, progress=False)
    keypoints_on = info.get("keypoints_on", "animal")
    if isinstance(keypoints_on, dict):  # JSON keys: "null" stands for the other species
        keypoints_on = {None if k in ("null", "None") else k: v for k, v in keypoints_on.items()}
    panels = {}
    for query in queries.itertuples():
        rows = candidates[candidates["image_id"] == query.image_id]
        # The pair that was scored, where the candidates say which image it was; otherwise
        # (an identity outside the candidates, an older run) the best of 6 of its photos.
        scored = ({row.identity: row.image for row in rows.itertuples()
                   if isinstance(row.image, str) and row.image}
                  if "image" in rows.columns and "image_id" in database.columns else {})
        others = [name for name in rows["identity"] if name not in scored]
        chosen = (database[database["image_id"].astype(str).isin(list(scored.values()))]
                  if scored else database.iloc[:0])
        pool = pd.concat([chosen,
                          database[database["identity"].isin(others)].groupby("identity").head(6)])
        if pool.empty:  # no photo of any candidate to draw against
            continue
        frame = pd.concat([pd.DataFrame([query._asdict()]), pool], ignore_index=True)
        regions = (keypoint_regions(frame, keypoints_on, isolator, "regions")
                   or [None] * len(frame))
        keypoints = extractor(frame["filepath"].astype(str).tolist(), regions)
        matched = matcher.match_batch([keypoints[0]] * (len(frame) - 1), keypoints[1:])
        strength = [m[:, 2].sum() for m in matched]
        best: dict[str, int] = {}
        for row, identity in enumerate(pool["identity"], start=1):
            if identity not in best or strength[row - 1] > strength[best[identity] - 1]:
                best[identity] = row
        query_image = load_image(frame["filepath"][0]) if drawn else None
        for identity, row in best.items():
            picture = (_jpeg(draw_matches(query_image, load_image(frame["filepath"][row]),
                                          keypoints[0], keypoints[row], matched[row - 1],
                                          regions[0], regions[row])) if drawn else "")
            panels[(query.image_id, identity)] = MatchPanel(
                picture, len(matched[row - 1]), float(strength[row - 1]),
                str(frame["image_id"][row]),
                _matched_points(keypoints[0], keypoints[row], matched[row - 1]))
    return panels


def _matched_points(first, second, matches: np.ndarray) -> tuple:
    """Each match as (x, y) in the first photo, (x, y) in the second, confidence: fractions of
    each photo's width and height, rounded for the page (a pixel is more than 1e-4 of a photo)."""
    if not len(matches):
        return ()
    here, there = first.in_photo((1, 1)), second.in_photo((1, 1))
    return tuple((round(float(here[int(i)][0]), 4), round(float(here[int(i)][1]), 4),
                  round(float(there[int(j)][0]), 4), round(float(there[int(j)][1]), 4),
                  round(float(confidence), 3)) for i, j, confidence in matches)


def _figure(width: float = 5.0, height: float = 3.2):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(width, height))


def _curve_plot(curve: pd.DataFrame, chosen: float, species: str) -> str:
    figure, axis = _figure()
    axis.plot(curve["threshold"], curve["baks"], label="BAKS")
    axis.plot(curve["threshold"], curve["baus"], label="BAUS")
    axis.plot(curve["threshold"], curve["score"], label="sqrt(BAKS x BAUS)", linewidth=2)
    if math.isfinite(chosen):
        axis.axvline(chosen, color="black", linestyle="--", label=f"chosen {chosen:.3f}")
    axis.set_xlabel("threshold on the top score")
    axis.set_title(species)
    axis.legend(fontsize=9)
    return _png(figure)


def _precision_recall(group: pd.DataFrame, chosen: float, species: str) -> str:
    """The threshold as a reviewer weighs it: of the queries given a name (top score at or over
    the threshold), the share named right (precision), against the share of known queries named
    right (recall); the chosen threshold marked."""
    figure, axis = _figure()
    known = ~group["unknown"].to_numpy()
    right = (group["identity"].to_numpy() == group["truth"].to_numpy()) & known
    order = np.argsort(-group["score"].to_numpy())
    named = np.arange(1, len(order) + 1)
    precision = np.cumsum(right[order]) / named
    recall = np.cumsum(right[order]) / max(1, known.sum())
    axis.plot(recall, precision, marker=".", markersize=3)
    if math.isfinite(chosen):
        at = int((group["score"].to_numpy() >= chosen).sum()) - 1
        if at >= 0:
            axis.plot(recall[at], precision[at], "ko", label=f"chosen {chosen:.3f}")
            axis.legend(fontsize=9)
    axis.set_xlabel("recall: known queries named right")
    axis.set_ylabel("precision: named queries right")
    axis.set_xlim(0, 1.02)
    axis.set_ylim(0, 1.02)
    axis.set_title(species)
    return _png(figure)


def _histogram(known: np.ndarray, unknown: np.ndarray, chosen: float, species: str) -> str:
    figure, axis = _figure()
    values = np.concatenate([known, unknown])
    bins = np.linspace(values.min(), values.max() + 1e-9, 30) if len(values) else 10
    axis.hist(known, bins=bins, alpha=0.6, label=f"known ({len(known)})")
    axis.hist(unknown, bins=bins, alpha=0.6, label=f"unknown ({len(unknown)})")
    if math.isfinite(chosen):
        axis.axvline(chosen, color="black", linestyle="--")
    axis.set_xlabel("top score")
    axis.set_title(species)
    axis.legend(fontsize=9)
    return _png(figure)


def _fmt(value) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else (
        f"{value:.3f}" if isinstance(value, float) else html.escape(str(value)))


def build_report(run_dir: str | Path, solution: str | Path | None = None,
                 output: str | Path | None = None, queries: int = 200, matches: int = 5,
                 device: str = "auto", cache_dir: str | Path | None = None) -> Path:
    """Write the HTML report of ``run_dir``; returns its path (default ``RUN_DIR/report.html``).

    For runs with local matching, the first ``matches`` queries shown get their keypoint matches
    drawn against each candidate's best image (keypoints come from the cache when present)."""
    run_dir = Path(run_dir)
    info_path = run_dir / RUN_FILE
    if not info_path.is_file():
        raise FileNotFoundError(f"{run_dir}: no {RUN_FILE}; write the run with "
                                f"'wildreid identify DATA --output {run_dir}/submission.csv'")
    info = json.loads(info_path.read_text())
    dataset = load_dataset(info["data_dir"], info.get("metadata"), check_files=False,
                           wildlife_dataset=info.get("wildlife_dataset"))
    submission = pd.read_csv(run_dir / info["submission"], dtype=str)
    candidates = pd.read_csv(run_dir / info["candidates"], dtype={"image_id": str, "identity": str})
    metadata = dataset.metadata.astype(object)
    paths = metadata.set_index("image_id")["filepath"]
    species_of = metadata.set_index("image_id")["species"]
    thresholds = {(None if k in ("None", "null") else k): v  # "None": runs before 2026-12
                  for k, v in info.get("thresholds", {}).items()}
    if info.get("default_threshold") is not None:
        thresholds[None] = info["default_threshold"]
    solution_path = Path(solution) if solution else None
    if solution_path is None and (dataset.source.parent / "solution.csv").is_file() and (
            info.get("metadata") in (None, "metadata.csv")):
        solution_path = dataset.source.parent / "solution.csv"
    if solution_path is not None and solution_path.is_dir():  # query photos sorted by identity
        solution_path = answers_from_folders(solution_path, dataset.query)
    answers_table = (solution_path if isinstance(solution_path, pd.DataFrame)
                     else pd.read_csv(solution_path, dtype=str) if solution_path else None)
    truth = answers_table.set_index("image_id")["identity"] if answers_table is not None else None
    database_ids = set(dataset.database["identity"].astype(str))
    top = candidates[candidates["rank"] == 1].set_index("image_id")
    parts = [f"<h1>wildreid report</h1><p>run: <code>{html.escape(str(run_dir))}</code> — "
             f"data <code>{html.escape(str(info['data_dir']))}</code>, model "
             f"<code>{html.escape(str(info.get('model')))}</code>, preset "
             f"<code>{html.escape(str(info.get('preset')))}</code>; {len(submission)} queries, "
             f"{is_new(submission['identity']).sum()} answered {NEW_INDIVIDUAL}.</p>"]
    order = list(submission["image_id"])
    if truth is not None:
        result = evaluate(submission, answers_table, metadata, candidates)
        rows = "".join(
            f"<tr><td>{html.escape(str(name))}</td><td>{v['queries']}</td><td>{v['known_queries']}"
            f"</td><td>{v['unknown_queries']}</td><td>{_fmt(v['baks'])}</td><td>{_fmt(v['baus'])}"
            f"</td><td><b>{_fmt(v['score'])}</b></td><td>{_fmt(v['known_top1'])}</td></tr>"
            for name, v in result["species"].items())
        parts.append("<h2>Metrics (AnimalCLEF 2025)</h2><table><tr><th>species</th><th>queries</th>"
                     "<th>known</th><th>unknown</th><th>BAKS</th><th>BAUS</th><th>score</th>"
                     f"<th>known top-1</th></tr>{rows}</table><p><b>score (mean over species): "
                     f"{_fmt(result['score'])}</b>; closed-set top-1 "
                     f"{_fmt(result.get('closed_set_top1'))}, top-5 "
                     f"{_fmt(result.get('closed_set_top5'))}</p>" + _METRICS_IN_WORDS)
        table = top.reset_index()
        table["truth"] = table["image_id"].map(truth)
        table["unknown"] = ~table["truth"].isin(database_ids)
        # A dataset without species is one pool: still curves, histograms and confusion.
        table["species"] = table["image_id"].map(species_of).fillna("all").astype(str)
        answers = submission.set_index("image_id")["identity"]
        table["answer"] = table["image_id"].map(answers)
        table["answer"] = np.where(is_new(table["answer"]), NEW_INDIVIDUAL, table["answer"])
        parts.append(_confusion(table))
        plots = []
        for name, group in table.groupby("species"):
            chosen = thresholds.get(name if name != "all" else None,
                                    thresholds.get(None, float("nan")))
            chosen = float("nan") if chosen is None else float(chosen)
            curve = threshold_curve(group["truth"], group["identity"], group["score"],
                                    group["unknown"])
            known_scores = group.loc[~group["unknown"], "score"].to_numpy()
            unknown_scores = group.loc[group["unknown"], "score"].to_numpy()
            plots.append(f'<img src="{_curve_plot(curve, chosen, str(name))}">'
                         f'<img src="{_precision_recall(group, chosen, str(name))}">'
                         f'<img src="{_histogram(known_scores, unknown_scores, chosen, str(name))}">')
        parts.append("<h2>Thresholds and score distributions</h2><div class='plots'>"
                     + "".join(plots) + "</div>")
        table["expected"] = np.where(table["unknown"], NEW_INDIVIDUAL, table["truth"])
        wrong = table[table["answer"] != table["expected"]].sort_values("score", ascending=False)
        errors = list(wrong["image_id"])
        order = errors + [i for i in order if i not in set(errors)]
    else:
        errors = []
    shown = order[:queries]
    database = dataset.database.astype(object)
    first_image = database.groupby("identity")["filepath"].first()
    panels = {}
    if (info.get("local") or info.get("selection")) and matches > 0:
        query_rows = metadata.set_index("image_id").loc[shown[:matches]].reset_index()
        pairs = candidates
        if truth is not None:  # an error also shows its matches with the right individual
            right = pd.DataFrame({"image_id": shown[:matches],
                                  "identity": [str(truth.get(i, "")) for i in shown[:matches]]})
            pairs = pd.concat([candidates, right[right["identity"].isin(database_ids)]])
        panels = match_panels(info, database, query_rows, pairs, device, cache_dir)
    answers_of = submission.set_index("image_id")["identity"]
    cards = []
    for image_id in shown:
        answer = answers_of.get(image_id, "")
        expected = "" if truth is None else str(truth.get(image_id, ""))
        unseen = truth is not None and expected not in database_ids
        if truth is None:
            verdict = ""
        elif unseen:  # the right answer was new_individual: say so, and who it really was
            verdict = (f"<br>right answer: <b>{NEW_INDIVIDUAL}</b> (individual "
                       f"{html.escape(expected)}, not in the database)")
        else:
            verdict = f"<br>right answer: <b>{html.escape(expected)}</b>"
        decided = NEW_INDIVIDUAL if is_new([answer])[0] else str(answer)
        mark = "" if truth is None else (" right" if decided == (
            NEW_INDIVIDUAL if unseen else expected) else " wrong")
        head = (f"<div class='query{mark}'><img src='{_thumbnail(paths[image_id])}'><br>"
                f"<b>{html.escape(image_id)}</b><br>answer: {html.escape(str(answer))}{verdict}"
                "</div>")
        ranked = candidates[candidates["image_id"] == image_id].sort_values("rank")
        tiles = "".join(
            f"<div class='candidate{' hit' if row.identity == expected else ''}'>"
            f"<img src='{_thumbnail(first_image[row.identity])}'><br>{int(row.rank)}. "
            f"{html.escape(row.identity)}<br>score {row.score:.3f}</div>"
            for row in ranked.itertuples() if row.identity in first_image.index)
        if (truth is not None and not unseen and expected in first_image.index
                and expected not in set(ranked["identity"])):  # the right one, beyond the top-k
            tiles += (f"<div class='candidate hit'><img src='{_thumbnail(first_image[expected])}'>"
                      f"<br>right: {html.escape(expected)}<br>not in the top "
                      f"{len(ranked)}</div>")
        drawn = "".join(f"<div class='candidate'><img src='{panels[(image_id, row.identity)].image}'>"
                        f"<br>{int(row.rank)}. {html.escape(row.identity)}: local matches</div>"
                        for row in ranked.itertuples() if (image_id, row.identity) in panels)
        if (image_id, expected) in panels and expected not in set(ranked["identity"]):
            drawn += (f"<div class='candidate hit'><img src='{panels[(image_id, expected)].image}'>"
                      f"<br>right: {html.escape(expected)}: local matches</div>")
        cards.append(f"<div class='row'>{head}{tiles}</div>"
                     + (f"<div class='row wrap'>{drawn}</div>" if drawn else ""))
    hardest = [card for image_id, card in zip(shown, cards) if image_id in set(errors)]
    others = [card for image_id, card in zip(shown, cards) if image_id not in set(errors)]
    if truth is not None:
        parts.append(f"<h2>Hardest errors ({len(errors)} wrong answers; most confident first)</h2>"
                     + (_paged(hardest) if errors else "<p>No wrong answers.</p>"))
        if len(hardest) < len(errors):
            parts.append(f"<p>{len(errors) - len(hardest)} more errors not shown "
                         "(<code>--queries</code> shows more).</p>")
    if others:
        title = ("Right answers, beside the errors" if truth is not None else "Queries")
        parts.append(f"<h2>{title} and their top candidates ({len(others)} shown)</h2>"
                     + _paged(others))
    if is_proposed(submission["identity"]).any():  # after the errors: what to check first
        parts.append(_proposed_groups(submission, paths, truth, database_ids,
                                      result.get("new_individuals") if truth is not None else None))
    style = ("body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1600px;padding:0 1em;"
             "color:#222}table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;"
             "padding:4px 10px;text-align:right}th{background:#f3f3f3}.row{display:flex;gap:10px;"
             "margin:12px 0;align-items:flex-start;flex-wrap:wrap}.query{background:#eef;"
             "padding:6px;width:170px;font-size:13px}.query.wrong{background:#fde8e8}"
             ".query.right{background:#e8f6e8}.candidate{padding:6px;font-size:13px;width:160px;"
             "text-align:center}.candidate img,.query img{width:150px;height:150px;"
             "object-fit:contain;background:#fafafa}.row.wrap .candidate{width:auto}"
             ".row.wrap .candidate img{width:440px;height:auto;max-width:100%}"
             ".hit{background:#cfc}.plots img{max-width:32%;height:auto}"
             ".words{max-width:70em;line-height:1.5}summary{cursor:pointer;color:#555;margin:6px 0}")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>wildreid report</title>"
            f"<style>{style}</style></head><body>{''.join(parts)}</body></html>")
    output = Path(output) if output else run_dir / "report.html"
    output.write_text(page, encoding="utf-8")
    return output
