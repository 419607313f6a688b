"""Datasets: AnimalCLEF ``metadata.csv`` or a folder-per-identity tree, validated at the boundary.

Every problem is collected and reported at once, so a user fixes a dataset in one pass.
"""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from wildreid.images import check_image
from wildreid.isolation import parse_bbox

COLUMNS = ["image_id", "identity", "path", "date", "orientation", "species", "split", "dataset"]
REQUIRED_COLUMNS = ["image_id", "identity", "path", "split"]
SPLITS = ("database", "query")
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif"}
NEW_INDIVIDUAL = "new_individual"
#: Optional columns: ``bbox`` "x, y, w, h" in pixels, or ``mask``, the path of a mask image
#: (nonzero = animal) relative to the dataset folder.
REGION_COLUMNS = ("bbox", "mask")
#: Column names read in any letter case (``Species``, ``IMAGE_ID``) and stored in lower case.
DOCUMENTED_COLUMNS = (*COLUMNS, *REGION_COLUMNS)
_SHOWN = 8  # examples listed per kind of problem


class DatasetError(ValueError):
    """One or more problems with a dataset; ``problems`` lists each, the message shows them all."""

    def __init__(self, source: str | Path, problems: list[str]):
        self.source = str(source)
        self.problems = problems
        lines = "\n".join(f"  - {problem}" for problem in problems)
        super().__init__(f"{source}: {len(problems)} problem(s) found:\n{lines}")


def list_examples(values: Iterable) -> str:
    """The first few ``values``, comma-separated, and how many more there are."""
    values = [str(v) for v in values]
    shown = ", ".join(values[:_SHOWN])
    return shown + (f" ... (+{len(values) - _SHOWN} more)" if len(values) > _SHOWN else "")


def canonical_columns(columns: Iterable, names: Sequence[str] = DOCUMENTED_COLUMNS
                      ) -> tuple[list[str], list[str]]:
    """``columns`` stripped, with those that are one of ``names`` in another letter case renamed
    to it, and the problems: columns that are the same name once case is ignored (which one was
    meant cannot be told). Other columns keep their name."""
    columns = list(columns)
    lower = {name.lower(): name for name in names}
    renamed = [lower.get(str(c).strip().lower(), str(c).strip()) for c in columns]
    problems = []
    for name in dict.fromkeys(renamed):
        given = [str(c).strip() for c, new in zip(columns, renamed) if new == name]
        if len(given) > 1 and name in lower.values():
            problems.append(f"columns {', '.join(given)} are all '{name}' once letter case is "
                            "ignored; keep one of them (or rename the others)")
    return renamed, problems


@dataclass
class Dataset:
    """Images with AnimalCLEF columns plus ``filepath``, the absolute path of each image."""

    metadata: pd.DataFrame
    source: Path

    @property
    def database(self) -> pd.DataFrame:
        return self.metadata[self.metadata["split"] == "database"].reset_index(drop=True)

    @property
    def query(self) -> pd.DataFrame:
        return self.metadata[self.metadata["split"] == "query"].reset_index(drop=True)


def _blank(series: pd.Series) -> pd.Series:
    return series.isna() | (series.astype(str).str.strip() == "")


def _normalise(frame: pd.DataFrame, root: Path) -> pd.DataFrame:
    frame = frame.copy()
    for column in COLUMNS:
        if column not in frame.columns:
            frame[column] = pd.NA
    for column in ("image_id", "identity", "species", "orientation", "split", "dataset", "path"):
        blank = _blank(frame[column])
        frame[column] = frame[column].astype("string").str.strip()
        frame.loc[blank, column] = pd.NA
    frame["filepath"] = [str((root / p).resolve()) if isinstance(p, str) else pd.NA
                         for p in frame["path"].astype(object)]
    for column in REGION_COLUMNS:  # optional user-given regions, which override the segmenter
        if column in frame.columns:
            frame[column] = frame[column].astype("string").str.strip()
            frame.loc[_blank(frame[column]), column] = pd.NA
    if "mask" in frame.columns:
        frame["maskpath"] = [str((root / p).resolve()) if isinstance(p, str) else pd.NA
                             for p in frame["mask"].astype(object)]
    return frame


def validate(frame: pd.DataFrame, source: str | Path, check_files: bool = True,
             workers: int = 8) -> None:
    """Raise :class:`DatasetError` listing every problem in a normalised metadata frame."""
    problems: list[str] = []
    duplicated = frame["image_id"][frame["image_id"].duplicated(keep=False)].dropna().unique()
    if len(duplicated):
        problems.append(f"{len(duplicated)} duplicate image_id value(s): "
                        f"{list_examples(duplicated)}")
    if frame["image_id"].isna().any():
        rows = (frame.index[frame["image_id"].isna()] + 2).tolist()
        problems.append(f"blank image_id on CSV line(s) {list_examples(rows)}")
    bad_split = frame["split"][~frame["split"].isin(SPLITS)].fillna("<blank>").unique()
    if len(bad_split):
        problems.append(f"unknown split value(s) {list_examples(bad_split)}; use 'database' or 'query'")
    database = frame[frame["split"] == "database"]
    if database.empty:  # every use (identify, train, a catalog) compares against known animals
        problems.append("no database images (no row with split 'database'): add the known "
                        "individuals' photos as rows with split 'database' and their identity")
    no_identity = database["image_id"][database["identity"].isna()]
    if len(no_identity):
        problems.append(f"{len(no_identity)} database image(s) without identity: "
                        f"{list_examples(no_identity)}")
    reserved = database["identity"].dropna().astype(str)
    reserved = reserved[reserved.str.fullmatch(NEW_INDIVIDUAL + r"(_[0-9]+)?")].unique()
    if len(reserved):  # the answers for unseen animals (and proposed new individuals)
        problems.append(f"'{NEW_INDIVIDUAL}' and '{NEW_INDIVIDUAL}_<n>' are reserved for answers "
                        f"and cannot be database identities: {list_examples(reserved)}")
    query = frame[frame["split"] == "query"]
    known_species = set(database["species"].dropna())
    orphan = sorted(set(query["species"].dropna()) - known_species)
    if orphan:
        problems.append(f"query species with no database images: {list_examples(orphan)}")
    no_path = frame["image_id"][frame["path"].isna()]
    if len(no_path):
        problems.append(f"{len(no_path)} image(s) with blank path: {list_examples(no_path)}")
    if "bbox" in frame.columns:
        bad = []
        for image_id, text in zip(frame["image_id"], frame["bbox"]):
            if isinstance(text, str):
                try:
                    parse_bbox(text)
                except ValueError:
                    bad.append(f"{image_id} ({text!r})")
        if bad:
            problems.append(f"{len(bad)} bbox value(s) are not 'x, y, w, h' with positive width "
                            f"and height: {list_examples(bad)}")
    if check_files and "maskpath" in frame.columns:
        masks = [m for m in frame["maskpath"].dropna() if not Path(m).is_file()]
        if masks:
            problems.append(f"{len(masks)} mask file(s) missing: {list_examples(masks)}")
    if check_files:
        paths = frame["filepath"].dropna().tolist()
        with ThreadPoolExecutor(workers) as pool:
            checks = list(pool.map(check_image, paths))
        missing = [p for p, c in zip(paths, checks) if c and c.endswith("file not found")]
        unreadable = [c for c in checks if c and not c.endswith("file not found")]
        if missing:
            problems.append(f"{len(missing)} image file(s) missing: {list_examples(missing)}")
        if unreadable:
            problems.append(f"{len(unreadable)} image file(s) unreadable: {list_examples(unreadable)}")
    if problems:
        raise DatasetError(source, problems)


def from_metadata(metadata: str | Path, root: str | Path | None = None,
                  check_files: bool = True, labelled: bool = False) -> Dataset:
    """Load an AnimalCLEF ``metadata.csv``; image paths are relative to ``root`` (the CSV's folder).
    ``labelled``: every image is a labelled one (no ``split`` needed; one given is ignored)."""
    metadata = Path(metadata)
    if not metadata.is_file():
        raise DatasetError(metadata, ["metadata file not found"])
    try:
        frame = pd.read_csv(metadata, dtype=str, keep_default_na=False, na_values=[""])
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as error:
        raise DatasetError(metadata, [f"not a readable CSV ({error})"]) from None
    frame.columns, problems = canonical_columns(frame.columns)
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns
               and not (labelled and c == "split")]
    if missing:
        problems.append(f"missing column(s) {', '.join(missing)}; expected {', '.join(COLUMNS)} "
                        "(species, orientation, date, dataset optional)")
    if problems:
        raise DatasetError(metadata, problems)
    if labelled:
        frame["split"] = "database"
    frame = _normalise(frame, Path(root) if root is not None else metadata.parent)
    validate(frame, metadata, check_files=check_files)
    return Dataset(frame, metadata)


def _wildlife_catalogue(root: Path, name: str) -> pd.DataFrame:
    """The metadata table of wildlife-datasets' loader ``name`` on ``root``, in our columns."""
    try:
        from wildlife_datasets import datasets
    except ImportError:
        raise DatasetError(root, [f"reading it as wildlife-datasets' {name} needs that library: "
                                  "pip install 'wildreid[wildlife]'"]) from None
    loader = getattr(datasets, name, None)
    if not (isinstance(loader, type) and issubclass(loader, datasets.WildlifeDataset)):
        known = sorted(c.__name__ for c in datasets.names_all)
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else f"known: {list_examples(known)}"
        raise DatasetError(root, [f"wildlife-datasets has no dataset {name!r}; {hint}"])
    try:  # our own validation reports missing or unreadable files, all at once
        table = loader(str(root), check_files=False).df
    except Exception as error:  # whatever the loader met in a folder it does not recognise
        raise DatasetError(root, [f"wildlife-datasets' {name} could not read this folder "
                                  f"({type(error).__name__}: {error}); is it that dataset, "
                                  "as downloaded?"]) from None
    frame = pd.DataFrame({"image_id": table["image_id"].astype(str),
                          "identity": table["identity"].astype(str),
                          "path": table["path"].astype(str)})
    for column in ("date", "orientation", "species", "split"):
        if column in table.columns:
            frame[column] = table[column].astype(object).where(table[column].notna(), pd.NA)
    animals = getattr(loader, "summary", {}).get("animals") or ()
    if "species" not in frame.columns and len(animals) == 1:
        frame["species"] = next(iter(animals))
    if "bbox" in table.columns:
        frame["bbox"] = [", ".join(f"{float(v):g}" for v in box) if isinstance(box, list | tuple)
                         and len(box) == 4 else pd.NA for box in table["bbox"]]
    frame["dataset"] = name
    unidentified = frame["identity"].isin(["unknown", "nan", "None"])
    if unidentified.any():  # wildlife-datasets' mark for photos of unidentified animals
        warnings.warn(f"{root}: {int(unidentified.sum())} photo(s) that {name} marks as of an "
                      "unknown individual are left out", stacklevel=3)
        frame = frame[~unidentified].reset_index(drop=True)
    return frame


def from_wildlife_datasets(root: str | Path, name: str, check_files: bool = True,
                           labelled: bool = False) -> Dataset:
    """Load a dataset folder as downloaded by wildlife-datasets, read by its loader ``name``
    (``NyalaData``, ``SeaTurtleID2022``...). Without ``labelled``, the table must hold a
    ``database``/``query`` split (as ``AnimalCLEF2025`` does); ``wildreid split`` makes one."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(root, ["no such folder"])
    frame = _wildlife_catalogue(root, name)
    if labelled:
        frame["split"] = "database"
    elif "split" not in frame.columns or not frame["split"].isin(SPLITS).any():
        raise DatasetError(root, [f"{name} has no database/query split: make one with "
                                  f"'wildreid split {root} --wildlife-datasets {name} "
                                  "--output SPLIT_DIR' and identify SPLIT_DIR"])
    frame = _normalise(frame, root)
    validate(frame, f"{root} ({name})", check_files=check_files)
    return Dataset(frame, root)


def _images_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def from_folders(root: str | Path, check_files: bool = True) -> Dataset:
    """Load a tree of images: ``root/<identity>/*`` (all database), or ``root/database/<identity>/*``
    with unlabelled queries anywhere under ``root/query/``. A level above identities,
    ``root/[database/]<species>/<identity>/*``, is read as species."""
    root = Path(root)
    rows = []
    database_root = root / "database" if (root / "database").is_dir() else root
    for image in _images_under(database_root):
        parts = image.relative_to(database_root).parts
        if database_root == root and parts[0] == "query":
            continue
        if len(parts) < 2:
            raise DatasetError(root, [f"{image}: images must sit in a folder named by identity"])
        species = parts[-3] if len(parts) >= 3 else pd.NA
        rows.append({"path": str(image.relative_to(root)), "identity": parts[-2],
                     "species": species, "split": "database"})
    if (root / "query").is_dir():
        for image in _images_under(root / "query"):
            rows.append({"path": str(image.relative_to(root)), "identity": pd.NA,
                         "species": pd.NA, "split": "query"})
    if not rows:
        raise DatasetError(root, ["no images found (looked for metadata.csv and folders of images)"])
    if all(row["split"] == "query" for row in rows):  # only root/query/: nothing to compare with
        raise DatasetError(root, [f"no database images to compare the queries with: put the known "
                                  f"individuals' photos in {root / 'database'}/<identity>/ "
                                  "beside query/ (or give a metadata.csv)"])
    frame = pd.DataFrame(rows)
    frame["image_id"] = [str(Path(p).with_suffix("")) for p in frame["path"]]
    frame = _normalise(frame, root)
    validate(frame, root, check_files=check_files)
    return Dataset(frame, root)


def answers_from_folders(folder: str | Path, queries: pd.DataFrame) -> pd.DataFrame:
    """A solution (``image_id, identity``) from query photos sorted into folders named by their
    true identity, ``folder/<identity>/<photo>`` (an identity not in the database means a new
    individual): what a user of the folder layout can write without knowing image ids. Photos
    are matched to ``queries`` by file content, so renamed or re-encoded copies do not count as
    matches and the folder may hold copies of the photos anywhere."""
    from wildreid.cache import content_keys

    folder = Path(folder)
    photos = list(_images_under(folder))
    if not photos:
        raise DatasetError(folder, ["no photos found: sort copies of the query photos into "
                                    "folders named by their true identity, <identity>/<photo>"])
    loose = [str(p) for p in photos if p.parent == folder]
    if loose:
        raise DatasetError(folder, [f"{len(loose)} photo(s) not inside an identity folder: "
                                    f"{list_examples(loose)}"])
    by_content = dict(zip(content_keys(queries["filepath"].astype(str)),
                          queries["image_id"].astype(str)))
    rows, unknown = [], []
    for photo, key in zip(photos, content_keys(photos)):
        if key in by_content:
            rows.append({"image_id": by_content[key], "identity": photo.parent.name})
        else:
            unknown.append(str(photo))
    if unknown:
        raise DatasetError(folder, [f"{len(unknown)} photo(s) are none of the dataset's query "
                                    f"photos (compared by content): {list_examples(unknown)}"])
    return pd.DataFrame(rows)


def load_dataset(path: str | Path, metadata: str | Path | None = None,
                 check_files: bool = True, wildlife_dataset: str | None = None,
                 labelled: bool = False) -> Dataset:
    """Load ``path``: its ``metadata.csv`` (or the ``metadata`` file given), a wildlife-datasets
    folder read by its loader ``wildlife_dataset``, else a folder tree. ``labelled``: every
    image is a labelled one (for ``split`` and ``train``; a ``split`` column is ignored)."""
    path = Path(path)
    if wildlife_dataset is not None:
        return from_wildlife_datasets(path, wildlife_dataset, check_files, labelled)
    if metadata is not None:
        metadata = Path(metadata)
        if not metadata.is_absolute() and not metadata.exists():
            metadata = path / metadata
        return from_metadata(metadata, root=path if path.is_dir() else None,
                             check_files=check_files, labelled=labelled)
    if path.is_file():
        return from_metadata(path, check_files=check_files, labelled=labelled)
    if not path.is_dir():
        raise DatasetError(path, ["no such file or folder"])
    if (path / "metadata.csv").is_file():
        return from_metadata(path / "metadata.csv", check_files=check_files, labelled=labelled)
    dataset = from_folders(path, check_files=check_files)
    return Dataset(dataset.database, dataset.source) if labelled else dataset
