"""Command line: a thin layer over the library API (``wildreid --help``)."""

from __future__ import annotations

import inspect
import json
import math
import os
import sys
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path

import typer
import typer.models
import typer.rich_utils
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

# Only light imports here: torch, timm and OpenCV load inside the commands that need them, so
# --help and usage errors answer at once.
from wildreid.defaults import DEFAULT_CACHE_DIR, DEFAULT_MODEL, PRESETS

if not sys.stdout.isatty() and not os.environ.get("TERMINAL_WIDTH"):
    # Help read through a pipe or a file is not cut at 80 columns (typer's default there).
    typer.rich_utils.MAX_WIDTH = 120

app = typer.Typer(help="wildreid: tell individual animals apart from photographs (open-set re-ID).",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
# Markup off: species, identities, image ids and paths come from the user's files and print as
# they are (a species "[/x]" is a name, not a closing tag); the few styled words are Text spans
# (_styled). Status lines and errors are not folded at the console's width: paths stay whole.
out = Console(markup=False)
err = Console(stderr=True, markup=False, soft_wrap=True)


def _styled(style: str, label: str, rest: str = "") -> Text:
    """``label`` in ``style``, then ``rest`` plain; neither is read as markup."""
    return Text.assemble((label, style), rest)


@contextmanager
def _clear_errors():
    """Known failures end with one clear message and exit code 2, not a traceback; warnings
    (such as damaged cache rows being recomputed) print as one line each. A file named
    ``[red]x.jpg`` prints as it is (the consoles read no markup)."""

    def show(message, category, *_ignored, **_more) -> None:
        err.print(_styled("yellow", "warning:", f" {message}"), highlight=False)

    from wildreid.cache import CacheDamaged

    with warnings.catch_warnings():
        warnings.simplefilter("always", CacheDamaged)  # each damaged row or file, by path
        warnings.showwarning = show
        try:
            yield
        except (ValueError, FileNotFoundError, FileExistsError) as error:  # DatasetError, ImageError...
            err.print(_styled("bold red", "error:", f" {error}"), highlight=False)
            raise typer.Exit(2) from None


def _threshold(value: str) -> str:
    from wildreid.run import parse_threshold

    try:  # nan and inf refused there: nan would answer new_individual to every query, silently
        parse_threshold(value)
    except ValueError as error:
        raise typer.BadParameter(str(error), param_hint="--threshold") from None
    return value


def _check_file_to_write(path: Path) -> None:
    """Refuse, by name, an output path that is a folder or runs through a file (else an
    IsADirectoryError or NotADirectoryError traceback from deep inside the writer)."""
    if path.is_dir():
        raise ValueError(f"{path}: a folder, not a file; give the file to write, such as "
                         f"{path / 'metadata.csv'}")
    blocking = next((parent for parent in path.parents if parent.exists() and not parent.is_dir()),
                    None)
    if blocking is not None:
        raise ValueError(f"{path}: {blocking} is a file, not a folder")


@app.command()
def identify(
    data_dir: Path = typer.Argument(..., help="Folder with metadata.csv (AnimalCLEF layout) or "
                                    "folders of images named by identity."),
    metadata: Path = typer.Option(None, help="Metadata CSV to use instead of DATA_DIR/metadata.csv "
                                  "(paths inside are relative to DATA_DIR)."),
    wildlife_datasets: str = typer.Option(None, "--wildlife-datasets", help="Read DATA_DIR as "
                                          "this wildlife-datasets dataset (its loader's name, "
                                          "e.g. NyalaData; pip install 'wildreid[wildlife]')."),
    model: str = typer.Option(DEFAULT_MODEL, help="Registered name (see 'wildreid models'), timm "
                              "name, hf-hub:ORG/NAME, or a wildreid .pt checkpoint; an ensemble "
                              "as A+B or A:0.7+B:0.3 (cosines averaged with the weights); per "
                              "species as nyala=NAME,lion=NAME (*=NAME: the rest, and the "
                              "species router's)."),
    output: Path = typer.Option(Path("submission.csv"), help="Submission CSV (image_id,identity)."),
    candidates: Path = typer.Option(None, help="Top-k candidates CSV "
                                    "[default: OUTPUT with .candidates.csv]."),
    device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N"),
    threshold: str = typer.Option("auto", help="new_individual threshold: 'auto' (fitted per "
                                  "species on the database), a cosine such as 0.6, or 'none'."),
    cache_dir: Path = typer.Option(DEFAULT_CACHE_DIR, help="Feature cache folder."),
    preset: str = typer.Option("fast", help="fast: global descriptor only (CPU-friendly); "
                               "accurate: per species, the pipeline (cosine, SIFT, ALIKED, "
                               "ALIKED then LightGlue) that wins on the database's own held-out "
                               "photos within --budget; run.json says what and why."),
    budget: float = typer.Option(None, min=0, help="Minutes the accurate preset may take, its "
                                 "choice included [default: 15 per 2,000 photos, at least 5]."),
    shortlist: str = typer.Option("100", help="Database images per query re-ranked by local "
                                  "matching (preset accurate), or 'all': every image of the "
                                  "query's species."),
    local: str = typer.Option(None, help="Local matchers instead of the preset's: aliked, "
                              "aliked-nn (ALIKED without LightGlue: CPU speed), disk, dedode "
                              "(weights: WILDREID_WEIGHTS=kornia or a folder), orb, "
                              "sift (fastest on CPU), comma-separated."),
    cluster_new: bool = typer.Option(False, "--cluster-new", help="Group the queries answered "
                                     "new_individual into proposed new individuals "
                                     "(new_individual_1, ...), cut as fitted on the database."),
    ray: str = typer.Option(None, help="Run on a Ray cluster: local (started on this machine), "
                            "auto (the cluster this machine is part of) or the head's ADDRESS; "
                            "same answers (pip install 'wildreid[ray]')."),
    settings: Path = typer.Option(None, help="TOML file of the settings beyond these options "
                                  "(keypoints, mirroring, isolation, cascade, cache...): "
                                  "'wildreid settings' prints them with their defaults."),
):
    """Name the individual in each query photo, or answer new_individual."""
    if preset not in PRESETS:
        raise typer.BadParameter(f"use one of {', '.join(PRESETS)}", param_hint="--preset")
    from wildreid.local import LOCAL_FEATURES
    from wildreid.settings import defaults, read_settings

    matchers = None if local is None else [name for name in local.split(",") if name]
    unknown = [name for name in matchers or () if name not in LOCAL_FEATURES]
    if unknown:
        raise typer.BadParameter(f"unknown local matcher {unknown[0]!r}; use "
                                 f"{', '.join(LOCAL_FEATURES)}", param_hint="--local")
    size = _shortlist(shortlist)
    threshold = _threshold(threshold)
    from wildreid.run import identify_dataset

    with _clear_errors():
        further = defaults() if settings is None else read_settings(settings)
        for path in (output, candidates):  # refused now, not after the whole run
            if path is not None:
                _check_file_to_write(path)
        cache = further.pop("cache")
        _, identifier, submission, written = identify_dataset(
            data_dir, metadata, model, output=output, candidates=candidates, device=device,
            threshold=threshold, cache_dir=cache_dir if cache else None, preset=preset,
            shortlist=size, local=matchers, wildlife_dataset=wildlife_datasets,
            cluster_new=cluster_new, ray=ray, budget=None if budget is None else budget * 60,
            **further)
    from wildreid.grouping import is_new, is_proposed

    new = int(is_new(submission["identity"]).sum())
    if cluster_new:
        groups = submission["identity"][is_proposed(submission["identity"])].value_counts()
        err.print(f"new individuals: {len(groups)} proposed for {new} queries "
                  f"({int((groups > 1).sum())} with two photos or more)")
    thresholds = ", ".join(f"{k or 'default'}={v:.3f}"
                           for k, v in identifier.decision_.thresholds.items())
    err.print(f"thresholds: {thresholds}")
    from wildreid.run import read_run_info

    info = read_run_info(output.parent)
    for name, chosen in info.get("selection", {}).get("species", {}).items():
        err.print(f"{name}: {chosen['why']}")
    empty = info.get("photos_without_keypoints")
    if empty and (empty["database"] or empty["query"]):
        err.print(f"photos without keypoints (judged by the global cosine alone): "
                  f"{empty['query']} of the queries, {empty['database']} of the database "
                  "photos its calibration matched")
    err.print(f"{len(submission)} queries: {len(submission) - new} named, {new} new_individual")
    err.print(f"wrote {output} and {written}")


def _shortlist(text: str) -> int | None:
    """``--shortlist``: a positive count, or ``all`` (``None``)."""
    if text.strip().lower() == "all":
        return None
    try:
        size = int(text)
    except ValueError:
        size = 0
    if size < 1:
        raise typer.BadParameter(f"{text!r} is neither a positive number of images nor 'all'",
                                 param_hint="--shortlist")
    return size


def print_scores(result: dict) -> None:
    from wildreid.data import list_examples

    table = Table(title="AnimalCLEF 2025 score")
    for column in ("species", "queries", "known", "unknown", "BAKS", "BAUS", "score", "known top-1"):
        # A long species name is folded, never cut to "…": it is what the row is about.
        table.add_column(column, justify="right" if column != "species" else "left",
                         overflow="fold" if column == "species" else "ellipsis")

    def fmt(value: float) -> str:
        return "n/a" if value is None or math.isnan(value) else f"{value:.4f}"

    for name, row in result["species"].items():
        table.add_row(name, str(row["queries"]), str(row["known_queries"]),
                      str(row["unknown_queries"]), fmt(row["baks"]), fmt(row["baus"]),
                      fmt(row["score"]), fmt(row["known_top1"]))
    out.print(table)
    out.print(_styled("bold", f"score (mean over species): {fmt(result['score'])}"))
    extras = ["accuracy", "macro_precision", "macro_recall", "macro_f1", "known_top1",
              "closed_set_top1", "closed_set_top5"]
    out.print("  ".join(f"{k}={fmt(result[k])}" for k in extras if k in result))
    router = result.get("species_router")
    if router:
        out.print(f"species router: {router['routed_queries']} queries without species routed; "
                  f"right for {fmt(router['accuracy'])} of the {router['checked']} whose species "
                  f"is known" + (f"; wrong: {list_examples(router['wrong'])}"
                                 if router["wrong"] else ""))
    grouped = result.get("new_individuals")
    if grouped:
        out.print(f"new individuals: {grouped['proposed_individuals']} proposed for "
                  f"{grouped['unknown_queries']} unknown queries of "
                  f"{grouped['unknown_individuals']} individuals; pairwise precision "
                  f"{fmt(grouped.get('pairwise_precision'))}, recall "
                  f"{fmt(grouped.get('pairwise_recall'))}, F1 {fmt(grouped.get('pairwise_f1'))}, "
                  f"ARI {fmt(grouped.get('ari'))}")


@app.command("evaluate")
def evaluate_command(
    submission: Path = typer.Argument(..., help="Submission CSV: image_id,identity."),
    solution: Path = typer.Argument(..., help="True identities: a CSV (image_id,identity), or a "
                                    "folder of the query photos sorted as <identity>/<photo> "
                                    "(an identity not in the database: a new individual)."),
    metadata: Path = typer.Option(None, help="metadata.csv of the dataset (species, database) "
                                  "[default: the dataset of the run, from run.json beside the "
                                  "submission]."),
    candidates: Path = typer.Option(None, help="Candidates CSV from identify: adds closed-set "
                                    "top-1/top-5 and the species router's accuracy [default: "
                                    "the run's, from run.json beside the submission]."),
    as_json: bool = typer.Option(False, "--json", help="Print the scores as JSON."),
):
    """Score a submission exactly as AnimalCLEF 2025 (BAKS, BAUS, sqrt(BAKS x BAUS) per species)."""
    with _clear_errors():
        from wildreid.data import answers_from_folders, load_dataset
        from wildreid.metrics import evaluate

        if metadata is not None:
            table = metadata
            dataset = load_dataset(metadata.parent, metadata) if solution.is_dir() else None
        else:  # what the run read: a folder-layout user has no metadata.csv to give
            run = Path(submission).parent / "run.json"
            if not run.is_file():
                raise FileNotFoundError(f"{submission}: no run.json beside it to find the "
                                        "dataset; give --metadata DATA/metadata.csv")
            info = json.loads(run.read_text())
            dataset = load_dataset(info["data_dir"], info.get("metadata"), check_files=False,
                                   wildlife_dataset=info.get("wildlife_dataset"))
            table = dataset.metadata
        run = Path(submission).parent / "run.json"
        if candidates is None and run.is_file():  # the run's own candidates, when it has them
            found = Path(json.loads(run.read_text()).get("candidates", ""))
            candidates = found if found.is_file() else None
        if solution.is_dir():
            solution = answers_from_folders(solution, dataset.query)
        result = evaluate(submission, solution, table, candidates)
    if as_json:
        print(json.dumps(_finite_or_null(result), indent=2, allow_nan=False,
                         default=lambda v: None))
    else:
        print_scores(result)


def _finite_or_null(value):
    """``value`` with every NaN or infinity (an undefined score, such as a precision with no
    pair to judge) as ``None``: JSON has no NaN, and a strict reader refuses Python's."""
    if isinstance(value, dict):
        return {key: _finite_or_null(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_null(item) for item in value]
    return None if isinstance(value, float) and not math.isfinite(value) else value


@app.command()
def split(
    data_dir: Path = typer.Argument(..., help="Labelled photos: a metadata CSV folder, folders "
                                    "<species>/<identity>/*.jpg, or a wildlife-datasets folder."),
    output: Path = typer.Option(..., help="Folder for metadata.csv and solution.csv (new files)."),
    kind: str = typer.Option("open", help="closed (every individual in both) | open (some "
                             "individuals only among queries: AnimalCLEF) | disjoint (none in "
                             "both) | time (open, each individual's later days as queries)."),
    query_share: float = typer.Option(0.3, help="Share of each known individual's photos that "
                                      "become queries (closed, open, time)."),
    unknown_share: float = typer.Option(0.3, help="Share of the photos whose individuals appear "
                                        "only as queries (open, time; disjoint: all queries)."),
    seed: int = typer.Option(0, help="Seed of the splitter (same seed, same split)."),
    metadata: Path = typer.Option(None, help="Metadata CSV instead of DATA_DIR/metadata.csv "
                                  "(a split column in it is ignored)."),
    wildlife_datasets: str = typer.Option(None, "--wildlife-datasets", help="Read DATA_DIR as "
                                          "this wildlife-datasets dataset (its loader's name, "
                                          "e.g. NyalaData; pip install 'wildreid[wildlife]')."),
):
    """Make a benchmark of your own labelled photos, in the AnimalCLEF layout (splitters of
    wildlife-datasets, per species)."""
    from wildreid.splits import SPLIT_KINDS

    if kind not in SPLIT_KINDS:
        raise typer.BadParameter(f"use one of {', '.join(SPLIT_KINDS)}", param_hint="--kind")
    from wildreid.data import load_dataset
    from wildreid.splits import split_labelled, split_summary, write_split

    with _clear_errors():
        dataset = load_dataset(data_dir, metadata, wildlife_dataset=wildlife_datasets,
                               labelled=True)
        try:
            metadata_out, solution = split_labelled(dataset.metadata, kind, query_share,
                                                    unknown_share, seed, dataset.source)
        except ImportError as error:
            raise ValueError(str(error)) from None
        written = write_split(metadata_out, solution, output)
    table = Table(title=f"{kind} split of {dataset.source} (seed {seed})")
    summary = split_summary(metadata_out)
    for column in summary.columns:
        table.add_column(column, justify="left" if column == "species" else "right")
    for row in summary.itertuples(index=False):
        table.add_row(*(str(value) for value in row))
    out.print(table)
    err.print(f"wrote {written[0]} and {written[1]} — next: wildreid identify {output} --output "
              f"RUN/submission.csv; wildreid evaluate RUN/submission.csv {written[1]}")


@app.command()
def demo(
    out_dir: Path = typer.Option(None, "--out", help="Where to write the synthetic dataset "
                                 "[default: a temporary folder]."),
    individuals: int = typer.Option(10, min=3, help="Known individuals per species."),
    unknown: int = typer.Option(4, min=1, help="Individuals per species seen only as queries."),
    database_images: int = typer.Option(4, min=1, help="Database photos per known individual."),
    query_images: int = typer.Option(2, min=1, help="Query photos per individual."),
    model: str = typer.Option(DEFAULT_MODEL, help="Descriptor to use."),
    device: str = typer.Option("auto", help="auto | cpu | cuda"),
    seed: int = typer.Option(0, help="Random seed of the synthetic animals and photos."),
    cache_dir: Path = typer.Option(DEFAULT_CACHE_DIR, help="Feature cache folder (the photos are "
                                   "the same for a seed: a second run computes nothing)."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Do not read or write the cache."),
):
    """Synthesise a small open-set dataset (spotted and striped animals), identify, evaluate."""
    from wildreid.demo import make_demo_dataset
    from wildreid.metrics import evaluate
    from wildreid.run import identify_dataset

    with tempfile.TemporaryDirectory() as scratch:
        root = out_dir or Path(scratch) / "wildreid-demo"
        make_demo_dataset(root, individuals, unknown, database_images, query_images, seed=seed)
        err.print(f"synthetic dataset in {root}")
        with _clear_errors():
            identify_dataset(root, model=model, output=root / "submission.csv", device=device,
                         cache_dir=None if no_cache else cache_dir)
            result = evaluate(root / "submission.csv", root / "solution.csv",
                              root / "metadata.csv", root / "submission.candidates.csv")
        print_scores(result)


@app.command()
def sheet(
    data_dir: Path = typer.Argument(..., help="Dataset folder (metadata.csv or folders of images)."),
    output: Path = typer.Option(Path("sheet.png"), help="PNG file to write."),
    n: int = typer.Option(32, "--n", min=1, help="Number of random images."),
    metadata: Path = typer.Option(None, help="Metadata CSV instead of DATA_DIR/metadata.csv."),
    weights: Path = typer.Option(None, help="u2netp.onnx to use [default: fetched once and cached]."),
    seed: int = typer.Option(0, help="Random seed of the sample."),
    cache_dir: Path = typer.Option(DEFAULT_CACHE_DIR, help="Region cache folder."),
):
    """Contact sheet of the animal-isolation stage: images with their masks and boxes."""
    from wildreid.data import load_dataset
    from wildreid.images import load_image
    from wildreid.isolation import Isolator, Segmenter, contact_sheet

    with _clear_errors():
        dataset = load_dataset(data_dir, metadata)
        sample = dataset.metadata.sample(min(n, len(dataset.metadata)), random_state=seed)
        regions = Isolator(lambda: Segmenter(weights), cache_dir=cache_dir)(sample)
        images = [load_image(p) for p in sample["filepath"]]
        contact_sheet(images, regions, sample["image_id"].tolist()).save(output)
    guarded = sum(r.source == "guard" for r in regions)
    err.print(f"wrote {output}: {len(images)} images, {guarded} fell back to the whole image")


@app.command()
def train(
    data_dir: Path = typer.Argument(..., help="Dataset folder; only its database images are used "
                                    "(of a wildlife-datasets folder: every identified photo)."),
    out: Path = typer.Option(Path("model.pt"), help="Best checkpoint (then: identify --model OUT); "
                             "OUT.last.pt holds the state to resume."),
    model: str = typer.Option(DEFAULT_MODEL, help="Starting descriptor (registry name, timm name, "
                              "hf-hub:..., or a .pt checkpoint)."),
    metadata: Path = typer.Option(None, help="Metadata CSV instead of DATA_DIR/metadata.csv."),
    wildlife_datasets: str = typer.Option(None, "--wildlife-datasets", help="Read DATA_DIR as "
                                          "this wildlife-datasets dataset (its loader's name, "
                                          "e.g. NyalaData; pip install 'wildreid[wildlife]')."),
    loss: str = typer.Option("arcface", help="arcface | subcenter-arcface | triplet-hard | "
                             "triplet-semihard | classifier (frozen backbone + 512-d head)."),
    epochs: int = typer.Option(20, min=1),
    identities_per_batch: int = typer.Option(16, "--p", min=2, help="Identities per batch (P)."),
    images_per_identity: int = typer.Option(4, "--k", min=1, help="Images per identity (K)."),
    accumulate: int = typer.Option(1, min=1, help="Batches per optimiser step."),
    lr_backbone: float = typer.Option(1e-4),
    lr_head: float = typer.Option(1e-3),
    unfreeze: int = typer.Option(None, help="Last N backbone stages trained; -1 all, 0 none "
                                 "(the head trains on cached backbone features: fast on a CPU) "
                                 "[default: 0 for classifier, else -1]."),
    cached_views: int = typer.Option(4, min=0, help="Views of each image the frozen stages "
                                     "describe once (one plain, the rest augmented; with "
                                     "--unfreeze 0, or N on EfficientNets); 0: fresh views "
                                     "through the whole backbone every step."),
    flip: str = typer.Option("auto", help="Horizontal flips: auto (not for left/right views), "
                             "all, none."),
    head_activation: str = typer.Option("none", help="After the head's batch norm: none "
                                        "(embeddings free in every direction) or relu."),
    patience: int = typer.Option(5, min=1, help="Early stopping: epochs without improvement."),
    steps_per_epoch: int = typer.Option(None, help="Batches per epoch [default: one pass]."),
    device: str = typer.Option("auto", help="auto | cpu | cuda"),
    workers: int = typer.Option(None, help="Decoding processes."),
    fresh: bool = typer.Option(False, help="Ignore OUT.last.pt and start over."),
    isolation: str = typer.Option("none", help="Train on the animal: none | crop | mask (then "
                                  "identify with the same isolation in its --settings file)."),
    cache_dir: Path = typer.Option(DEFAULT_CACHE_DIR, help="Region cache."),
    seed: int = typer.Option(0),
):
    """Fine-tune a descriptor on the database (never on queries), validated inside it."""
    from wildreid.data import DatasetError, load_dataset
    from wildreid.heads import EmbeddingHead
    from wildreid.train import LOSSES, TrainConfig, Trainer, TrainingDataError

    if loss not in LOSSES:
        raise typer.BadParameter(f"use one of {', '.join(LOSSES)}", param_hint="--loss")
    if head_activation not in EmbeddingHead.ACTIVATIONS:
        raise typer.BadParameter(f"use one of {', '.join(EmbeddingHead.ACTIVATIONS)}",
                                 param_hint="--head-activation")
    config = TrainConfig(loss=loss, epochs=epochs, identities_per_batch=identities_per_batch,
                         images_per_identity=images_per_identity, accumulate=accumulate,
                         lr_backbone=lr_backbone, lr_head=lr_head, flip=flip,
                         unfreeze=(0 if loss == "classifier" else -1) if unfreeze is None else unfreeze,
                         cached_views=cached_views, patience=patience,
                         steps_per_epoch=steps_per_epoch, seed=seed, isolation=isolation,
                         head_activation=head_activation)
    with _clear_errors():
        # A wildlife-datasets folder is all labelled photos (those of unknown animals left out).
        dataset = load_dataset(data_dir, metadata, wildlife_dataset=wildlife_datasets,
                               labelled=wildlife_datasets is not None)
        trainer = Trainer(model, out, config, device=device, workers=workers, cache_dir=cache_dir)
        try:
            history = trainer.fit(dataset.database, resume=not fresh)
        except TrainingDataError as error:  # a problem of the dataset: name its file
            raise DatasetError(dataset.source, [str(error)]) from None
    start = trainer.baseline
    err.print(f"starting model: validation score {start['score']:.3f}, top-1 {start['top1']:.3f}")
    for row in history:
        err.print(f"epoch {row['epoch']}: loss {row['loss']:.3f}, validation score "
                  f"{row['score']:.3f}, top-1 {row['top1']:.3f}, {row['images_per_s']:.0f} images/s")
    err.print(f"wrote {out} (best validation) — use: wildreid identify DATA --model {out}")


@app.command()
def report(
    run_dir: Path = typer.Argument(..., help="Folder of a run: identify --output RUN_DIR/submission.csv"),
    solution: Path = typer.Option(None, help="True answers (image_id,identity) for metrics and "
                                  "errors [default: solution.csv beside metadata.csv, if any]."),
    output: Path = typer.Option(None, help="HTML file [default: RUN_DIR/report.html]."),
    queries: int = typer.Option(200, min=1, help="Queries shown with their top candidates: "
                                "the errors first, then the right answers, in pages of 25."),
    matches: int = typer.Option(5, min=0, help="Queries whose local matches are drawn (runs "
                                "with --preset accurate)."),
    device: str = typer.Option("auto", help="For drawing matches: auto | cpu | cuda"),
    cache_dir: Path = typer.Option(DEFAULT_CACHE_DIR, help="Keypoint and region cache."),
):
    """One self-contained HTML report of a run: metrics, threshold curves, errors, candidates."""
    from wildreid.report import build_report

    with _clear_errors():
        written = build_report(run_dir, solution, output, queries, matches, device, cache_dir)
    err.print(f"wrote {written}")


catalog_app = typer.Typer(help="A persistent catalog of individuals (SQLite + photos + features).",
                          no_args_is_help=True)
app.add_typer(catalog_app, name="catalog")


@app.command("settings")
def settings_command():
    """Print every setting 'identify --settings FILE' reads, at its default and with its
    meaning: a file to start from (wildreid settings > my-settings.toml)."""
    from wildreid.settings import settings_template

    out.print(settings_template(), markup=False, highlight=False, soft_wrap=True)


@catalog_app.command("init")
def catalog_init(
    folder: Path = typer.Argument(..., help="New catalog folder."),
    preset: str = typer.Option("fast", help="fast (global descriptor, cosine scores) or accurate "
                               "(+ local matching, calibrated scores; best on a GPU)."),
):
    """Create an empty catalog."""
    from wildreid.catalog import Catalog

    with _clear_errors():
        if folder.exists() and not folder.is_dir():  # else a NotADirectoryError traceback
            raise ValueError(f"{folder}: not a folder (a file has that name); give a new folder "
                             "for the catalog")
        Catalog.create(folder, preset)
    err.print(f"created catalog {folder}")


@catalog_app.command("add")
def catalog_add(
    folder: Path = typer.Argument(..., help="Catalog folder (wildreid catalog init)."),
    data_dir: Path = typer.Argument(..., help="AnimalCLEF folder or folder tree to import."),
    metadata: Path = typer.Option(None, help="Metadata CSV instead of DATA_DIR/metadata.csv."),
    rank: bool = typer.Option(True, help="Rank the photos waiting for review ahead, so the "
                              "review app shows their candidates at once."),
):
    """Import a dataset's photos into the catalog: those with an identity as identified, the
    others as waiting for review (ranked ahead unless --no-rank)."""
    from wildreid.catalog import Catalog

    with _clear_errors():
        catalog = Catalog(folder, progress=True)
        imported = catalog.add_dataset(data_dir, metadata)
    err.print(f"added {imported.added} identified photos and {imported.waiting} waiting for "
              f"review; the catalog holds {len(catalog.individuals())} individuals")
    if rank and imported.waiting:
        with _clear_errors():
            ranked = catalog.rank_waiting()
        if ranked:
            err.print(f"ranked {ranked} waiting photos ahead: 'wildreid serve --catalog "
                      f"{folder}' shows their candidates at once")
    if imported.skipped:
        shown = ", ".join(imported.skipped[:5]) + (" ..." if len(imported.skipped) > 5 else "")
        err.print(_styled("yellow", f"skipped {len(imported.skipped)} photos whose image_id is "
                          "already in the catalog", f" ({shown}); give them other ids to add them "
                          "as well"))
    if imported.duplicates:
        pairs = [f"{new} (as {old})" for new, old in imported.duplicates.items()]
        shown = ", ".join(pairs[:5]) + (" ..." if len(pairs) > 5 else "")
        err.print(_styled("yellow", f"skipped {len(pairs)} photos already in the catalog under "
                          "other ids", f" (the same bytes: {shown})"))


@catalog_app.command("export")
def catalog_export(
    folder: Path = typer.Argument(..., help="Catalog folder."),
    output: Path = typer.Option(Path("metadata.csv"), help="AnimalCLEF metadata.csv to write "
                                "(paths relative to it)."),
):
    """Write the catalog as an AnimalCLEF metadata.csv: identified photos as the database,
    waiting ones as queries (for identify, train and evaluate)."""
    from wildreid.catalog import Catalog

    with _clear_errors():
        _check_file_to_write(output)
        written = Catalog(folder).export(output)
    err.print(f"wrote {written}")


@app.command()
def serve(
    catalog: Path = typer.Option(..., help="Catalog folder (wildreid catalog init/add)."),
    host: str = typer.Option("127.0.0.1", help="Address to bind; localhost by default."),
    port: int = typer.Option(8000),
    allowed_host: list[str] = typer.Option(
        None, help="Host name the app may be reached by besides localhost and --host (repeat it; "
        "e.g. the machine's name on the LAN, or the name a reverse proxy forwards)."),
):
    """Local review web app: browse individuals, identify a photo, confirm or create."""
    import uvicorn

    from wildreid.app import LOCAL_HOSTS, create_app

    everywhere = host in ("0.0.0.0", "::")
    named = [f"[{name}]" if ":" in name and not name.startswith("[") else name  # IPv6 as in Host
             for name in ([] if everywhere else [host]) + list(allowed_host or [])]
    with _clear_errors():  # CatalogError is a ValueError
        application = create_app(catalog, allowed_hosts=[*LOCAL_HOSTS, "[::1]", *named])
    if everywhere:
        err.print(_styled("yellow", "bound to every address: anyone on your network who can "
                          "reach this machine can use the app (it has no accounts). Requests "
                          "must name this machine as localhost or a --allowed-host "
                          "(DNS-rebinding guard)."))
    err.print(f"wildreid review on http://{host}:{port}/  (Ctrl+C to stop)")
    uvicorn.run(application, host=host, port=port, log_level="warning")


@app.command()
def models():
    """List the registered model names (any timm or hf-hub: name works too)."""
    from wildreid.models import available

    for name, summary in available().items():  # one line each, whatever the width: greppable
        out.print(_styled("bold", name, f"  {summary}"), soft_wrap=True, highlight=False)


def _help_as_plain_text(group: typer.Typer) -> None:
    """typer reads help texts as rich markup, which eats the "[ray]" of "pip install
    'wildreid[ray]'" and every "[default: ...]"; the texts here are plain: escape them, once."""
    for command in group.registered_commands:
        text = command.help or inspect.getdoc(command.callback)
        command.help = escape(text) if text else None
        for parameter in inspect.signature(command.callback).parameters.values():
            info = parameter.default
            if isinstance(info, typer.models.ParameterInfo) and info.help:
                info.help = escape(info.help)
    for subgroup in group.registered_groups:
        _help_as_plain_text(subgroup.typer_instance)


_help_as_plain_text(app)
