"""A persistent catalog of individuals: SQLite records, photos copied in, features cached.

``Catalog.create(folder)`` then ``add_dataset(data_dir)`` imports the database photos of an
AnimalCLEF folder; ``identify(photo)`` ranks the catalog's individuals for a new photo;
``confirm(image_id, individual)`` or ``new_individual(image_id)`` records the decision and grows
the catalog. Features of catalog photos are cached by content under the catalog, so adding photos
never recomputes the others, and everything survives a restart. Writes run in SQLite transactions
(WAL), so concurrent requests cannot lose a decision.
"""

from __future__ import annotations

import csv
import functools
import json
import os
import shutil
import sqlite3
import threading
import unicodedata
import uuid
from collections.abc import Iterable, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from types import MappingProxyType
from typing import NamedTuple

import numpy as np
import pandas as pd

from wildreid.cache import content_key
from wildreid.data import load_dataset
from wildreid.grouping import is_new, is_proposed
from wildreid.images import MAX_PIXELS, ImageError, image_format, load_image

#: Longest individual name or image id accepted: longer text is a mistake or an attack, not a name.
MAX_NAME_LENGTH = 200

#: How stored photos are named by their detected format (never by the client's file name), so a
#: file is only ever served as the image type its bytes are.
_SUFFIX = {"JPEG": ".jpg", "MPO": ".jpg", "PNG": ".png", "WEBP": ".webp", "TIFF": ".tif",
           "BMP": ".bmp", "GIF": ".gif"}
#: The only formats a photo may be in: camera and web formats, not Pillow's every plug-in (EPS
#: would run Ghostscript; rare formats are rarely hardened).
PHOTO_FORMATS = ("JPEG", "PNG", "WEBP", "TIFF", "BMP", "GIF")  # JPEG opens phones' MPO too

SCHEMA = """
CREATE TABLE IF NOT EXISTS individuals (
    name TEXT PRIMARY KEY, species TEXT, created TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS images (
    image_id TEXT PRIMARY KEY, individual TEXT REFERENCES individuals(name), species TEXT,
    orientation TEXT, path TEXT NOT NULL, added TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS decisions (
    id INTEGER PRIMARY KEY AUTOINCREMENT, image_id TEXT NOT NULL, individual TEXT NOT NULL,
    kind TEXT NOT NULL, created TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS ranked (
    image_id TEXT PRIMARY KEY, generation INTEGER NOT NULL, candidates TEXT NOT NULL);
"""
#: Columns added since the first catalogs: added on open, so older catalogs keep working.
_ADDED_COLUMNS = {
    # source: the file name the photo came with (text only: it never names a file here);
    # location and notes: what the field team writes about the sighting (:meth:`describe_photo`).
    "images": {"date": "TEXT", "source": "TEXT", "location": "TEXT", "notes": "TEXT"},
    # previous: the photo's individual before the decision (what undo restores); undone: 1 once
    # undone; detail: what a merge moved (JSON), so it can be undone.
    "decisions": {"previous": "TEXT", "undone": "INTEGER NOT NULL DEFAULT 0", "detail": "TEXT"},
}


#: What spreadsheets (Excel, LibreOffice, Google Sheets) read as the start of a formula; an
#: exported text cell starting with one gets a leading ``'`` (OWASP's CSV-injection guidance).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")

#: Lookalikes of Latin letters and digits, each mapped to what it is mistaken for: the common
#: Cyrillic, Greek and Latin rows of Unicode's confusables (TR39, confusables.txt), in both
#: cases, plus TR39's own ASCII rows (I, 1 and | for l; 0 for O; m for rn). A small table of our
#: own, because no maintained package on PyPI exposes TR39 skeletons: confusable-homoglyphs keeps
#: the table without its direction (no skeleton), confusables (last release 2021) compares by
#: its own ASCII forms, and the one package with a skeleton is a young compiled beta.
_CONFUSABLES = str.maketrans({
    "0": "O", "1": "l", "I": "l", "|": "l", "m": "rn", "\u0131": "i", "\u01c0": "l",
    "\u0251": "a", "\u0261": "g",
    # Cyrillic
    "\u0410": "A", "\u0412": "B", "\u0415": "E", "\u041a": "K", "\u041c": "M", "\u041d": "H",
    "\u041e": "O", "\u0420": "P", "\u0421": "C", "\u0422": "T", "\u0423": "Y", "\u0425": "X",
    "\u042c": "b", "\u0405": "S", "\u0406": "l", "\u0408": "J", "\u04c0": "l", "\u051a": "Q",
    "\u051c": "W", "\u04ae": "Y", "\u0430": "a", "\u0435": "e", "\u043e": "o", "\u0440": "p",
    "\u0441": "c", "\u0443": "y", "\u0445": "x", "\u0455": "s", "\u0456": "i", "\u0458": "j",
    "\u0501": "d", "\u051b": "q", "\u051d": "w", "\u04bb": "h", "\u04cf": "l", "\u04af": "y",
    # Greek
    "\u0391": "A", "\u0392": "B", "\u0395": "E", "\u0396": "Z", "\u0397": "H", "\u0399": "l",
    "\u039a": "K", "\u039c": "M", "\u039d": "N", "\u039f": "O", "\u03a1": "P", "\u03a4": "T",
    "\u03a5": "Y", "\u03a7": "X", "\u03b1": "a", "\u03bf": "o", "\u03c1": "p", "\u03bd": "v",
    "\u03b9": "i", "\u03b3": "y", "\u03f2": "c", "\u03f3": "j",
})


class CatalogError(ValueError):
    """A request the catalog cannot honour; the message says why."""


class DecisionConflict(CatalogError):
    """A decision about a photo that was already decided (a replay, a double click)."""


class DuplicatePhoto(CatalogError):
    """A photo whose bytes the catalog already holds, under the image id ``existing``."""

    def __init__(self, image_id: str, existing: str):
        super().__init__(f"image {image_id!r} is the photo already in the catalog as {existing!r}")
        self.existing = existing


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def check_name(text: object, what: str = "individual name") -> str:
    """``text`` stripped, or :class:`CatalogError` when it cannot name an individual or image:
    blank, longer than :data:`MAX_NAME_LENGTH`, holding control characters, or a reserved
    answer (``new_individual``, ``new_individual_<n>``)."""
    name = str(text).strip() if text is not None and not pd.isna(text) else ""
    name = unicodedata.normalize("NFC", name)  # "Zoë" typed two ways is one name
    if not name:
        raise CatalogError(f"the {what} is blank")
    if len(name) > MAX_NAME_LENGTH:
        raise CatalogError(f"the {what} {name[:40]!r}... is longer than {MAX_NAME_LENGTH} "
                           "characters")
    if any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in name):
        raise CatalogError(f"the {what} {name!r} holds control characters")
    if what == "individual name" and is_new([unicodedata.normalize("NFKC", name).casefold()])[0]:
        raise CatalogError("'new_individual' and 'new_individual_<n>' are answers for unseen "
                           "animals, not names")
    return name


@functools.lru_cache(maxsize=1 << 16)
def skeletons(name: str) -> tuple[str, str]:
    """What ``name`` looks like, for telling lookalike names apart: TR39's skeleton (each
    character replaced by the one it is mistaken for, :data:`_CONFUSABLES`, on the decomposed
    text), of the compatibility form (full-width and styled letters are letters), without case.
    Two names look alike when either of the two keys is the same.

    Two keys because ``I`` looks like ``l`` in the sans-serif fonts names are shown in, and is
    ``i`` without case: one key folding both into one (``i`` = ``l``) would call ``kiki`` and
    ``klkl`` alike. The first maps ``I`` as ``l`` before the case fold, the second folds case
    first. Each maps again after the fold, so a capital lookalike without a row of its own is
    caught as its small letter."""
    text = unicodedata.normalize("NFKD", name)
    keys = (text.translate(_CONFUSABLES).casefold(), text.casefold())
    return tuple(unicodedata.normalize("NFC", key.translate(_CONFUSABLES)) for key in keys)


def lookalike(name: str, others: Iterable[str]) -> str | None:
    """The first of ``others`` (``name`` itself aside) that looks like ``name``, else None."""
    keys = skeletons(name)
    return next((other for other in others if other != name
                 and any(a == b for a, b in zip(keys, skeletons(other)))), None)


def lookalike_error(name: str, existing: str, species: str | None) -> CatalogError:
    """Why ``name`` is refused beside ``existing``, naming the characters that differ."""
    odd = [c for c in dict.fromkeys(name) if c not in existing][:3]
    shown = ", ".join(f"{c!r} U+{ord(c):04X} {unicodedata.name(c, 'unnamed')}" for c in odd)
    among = f"among the {species} individuals" if species else "among individuals without species"
    return CatalogError(f"the individual name {name!r} looks like {existing!r}, which exists "
                        f"{among}" + (f" ({name!r} has {shown})" if shown else "") +
                        "; a reviewer could pick one for the other: choose a name that differs "
                        "visibly")


def csv_safe(table: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``table`` to write as CSV for spreadsheets: each text cell starting with one of
    :data:`FORMULA_STARTS` (``=cmd|...``, ``+SUM(...)``, ``-1+2``, ``@foo``, tab, carriage
    return) gets a leading ``'``, so it is shown as text, never run as a formula. Numeric columns
    are left as they are: a negative number is a number, not a formula."""
    def safe(value: object) -> object:
        return f"'{value}" if isinstance(value, str) and value.startswith(FORMULA_STARTS) else value

    return pd.DataFrame({name: column if pd.api.types.is_numeric_dtype(column)
                         else column.map(safe) for name, column in table.items()})


#: How the review queue can be ordered (:meth:`Catalog.unassigned`).
QUEUE_ORDERS = ("added", "uncertain", "confident")
#: Waiting photos ranked together when they are ranked ahead (:meth:`Catalog.rank_waiting`).
RANK_BATCH = 64
#: The longest location, note or source name a photo keeps, in characters.
NOTE_LENGTH = 2000


def _note(value: str, what: str) -> str:
    """Free text a person typed (a location, a note), checked: text of at most
    :data:`NOTE_LENGTH` characters, without control characters other than line breaks and
    tabs. It is shown as text and stored, never used as a path or markup."""
    if not isinstance(value, str):
        raise CatalogError(f"the {what} must be text")
    value = value.strip()
    if len(value) > NOTE_LENGTH:
        raise CatalogError(f"the {what} is longer than {NOTE_LENGTH} characters "
                           f"({len(value)}); shorten it")
    if any((ord(char) < 32 and char not in "\n\t") or ord(char) == 127 for char in value):
        raise CatalogError(f"the {what} holds control characters; type it as plain text")
    return value


def _told_apart(score: float, threshold: float) -> tuple[str, str]:
    """``score`` and ``threshold`` with two decimals, or as many more (up to six) as it takes to
    show they differ: "0.82, under the threshold 0.82" reads as a contradiction."""
    for digits in range(2, 7):
        shown = f"{score:.{digits}f}", f"{threshold:.{digits}f}"
        if shown[0] != shown[1] or score == threshold:
            return shown
    return shown


def _generation(connection: sqlite3.Connection) -> int:
    row = connection.execute("SELECT value FROM settings WHERE key = 'generation'").fetchone()
    return int(row[0]) if row else 0


def _ranking_text(ranked: pd.DataFrame) -> str:
    """One photo's ranked candidates (:meth:`Catalog.identify`'s frame and its attrs) as stored."""
    return json.dumps({"rows": ranked.to_dict("list"), "attrs": ranked.attrs})


def _ranking_of(text: str) -> pd.DataFrame:
    stored = json.loads(text)
    ranked = pd.DataFrame(stored["rows"], columns=["rank", "identity", "score", "image"])
    ranked.attrs = stored["attrs"]
    return ranked


def _relative(path: Path, base: str | Path) -> str:
    """``path`` relative to ``base``, led by ``./`` where it would start like a formula: still
    the same path (the export stays a dataset), never a formula."""
    relative = os.path.relpath(path, base)
    return os.path.join(os.curdir, relative) if relative.startswith(FORMULA_STARTS) else relative


class Imported(NamedTuple):
    """What :meth:`Catalog.add_dataset` did: identified photos added, query photos added to wait
    for a decision, ids skipped as already there, and ``duplicates``: photos skipped because the
    catalog already holds their bytes ({their id in the dataset: the id they are stored under})."""

    added: int
    skipped: list[str]
    waiting: int = 0
    duplicates: Mapping[str, str] = MappingProxyType({})


class Catalog:
    """The catalog in ``folder``: ``catalog.sqlite``, ``photos/``, ``cache/``."""

    def __init__(self, folder: str | Path, progress: bool = False):
        self.folder = Path(folder).resolve()
        self.progress = progress  # show the fitting and ranking work (the CLI; not the app)
        self.database = self.folder / "catalog.sqlite"
        if not self.database.is_file():
            raise CatalogError(f"{self.folder}: not a catalog (no catalog.sqlite); create one "
                               "with 'wildreid catalog init FOLDER'")
        self.photos = self.folder / "photos"
        self.cache = self.folder / "cache"
        #: (generation, model, {image_id: individual} it knows, photos at its last fit,
        #: whether it has thresholds): what an update can grow instead of fitting again.
        self._identifier: tuple | None = None
        self._lock = threading.Lock()
        self._grouping = None  # (generation, NewIndividualGrouping) of the last proposed_groups
        #: (generation, {image_id: ranked candidates}) of the waiting photos ranked ahead
        #: (:meth:`rank_waiting`).
        self._ahead: tuple[int, dict[str, pd.DataFrame]] = (-1, {})
        self._migrate()

    def _migrate(self) -> None:
        with sqlite3.connect(self.database, timeout=30) as connection:
            connection.executescript(SCHEMA)  # tables added since (IF NOT EXISTS)
            for table, columns in _ADDED_COLUMNS.items():
                present = {row[1] for row in connection.execute(f"PRAGMA table_info({table})")}
                for column, kind in columns.items():
                    if column not in present:
                        connection.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
            # Photos are found by their stored file (named by content) to skip duplicates.
            connection.execute("CREATE INDEX IF NOT EXISTS images_path ON images(path)")

    @classmethod
    def create(cls, folder: str | Path, preset: str = "fast") -> Catalog:
        """A new empty catalog; ``preset`` (``fast`` or ``accurate``, see ``wildreid identify``)
        sets how photos are ranked: ``accurate`` re-ranks by local matches and shows calibrated
        match probabilities."""
        from wildreid.defaults import PRESETS

        if preset not in PRESETS:
            raise CatalogError(f"unknown preset {preset!r}; use one of {', '.join(PRESETS)}")
        folder = Path(folder)
        (folder / "photos").mkdir(parents=True, exist_ok=True)
        with sqlite3.connect(folder / "catalog.sqlite") as connection:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.executescript(SCHEMA)
            connection.execute("INSERT OR REPLACE INTO settings VALUES ('preset', ?)", (preset,))
        return cls(folder)

    @property
    def preset(self) -> str:
        rows = self._read("SELECT value FROM settings WHERE key = 'preset'")
        return rows["value"].iloc[0] if len(rows) else "fast"

    def generation(self) -> int:
        """How many writes the catalog has seen (any process)."""
        connection = sqlite3.connect(self.database, timeout=30)
        try:
            return _generation(connection)
        finally:
            connection.close()

    def is_fitted(self) -> bool:
        """Whether this process holds a model fitted on the catalog as it is now."""
        fitted = self._identifier
        return fitted is not None and fitted[0] == self.generation()

    def has_identified_photos(self) -> bool:
        return not self._read("SELECT 1 FROM images WHERE individual IS NOT NULL LIMIT 1").empty

    def unassigned(self, order: str = "added") -> list[str]:
        """Photos added without an individual (queries waiting for a decision), in ``order``
        (:data:`QUEUE_ORDERS`): as added; ``uncertain`` first, those whose best candidate's
        score lies closest to its species' threshold (where a reviewer's eye is most needed);
        or ``confident`` first, the highest best score (fast confirming). Photos not ranked
        ahead yet (:meth:`rank_waiting`) follow in the order they were added."""
        if order not in QUEUE_ORDERS:
            raise CatalogError(f"unknown queue order {order!r}; use one of "
                               f"{', '.join(QUEUE_ORDERS)}")
        waiting = self._read("SELECT image_id FROM images WHERE individual IS NULL "
                             "ORDER BY added")["image_id"].tolist()
        if order == "added":
            return waiting
        ahead = self.ranked_ahead()

        def need(image_id: str) -> tuple:
            ranked = ahead.get(image_id)
            if ranked is None or ranked.empty:
                return (1, 0.0)
            score = float(ranked["score"].iloc[0])
            threshold = ranked.attrs.get("threshold")
            if order == "confident":
                return (0, -score)
            # Without a threshold yet (too few individuals), the weakest best match first.
            return (0, score if threshold is None else abs(score - threshold))

        return sorted(waiting, key=need)  # stable: ties keep the order they were added

    def ranked_ahead(self) -> dict[str, pd.DataFrame]:
        """The waiting photos' candidates ranked ahead by :meth:`rank_waiting` (in this process or
        another: they are stored in the catalog), while the catalog has not changed since (else
        none)."""
        generation = self.generation()
        if self._ahead[0] != generation:
            stored = self._read("SELECT image_id, candidates FROM ranked WHERE generation = ?",
                                (generation,))
            self._ahead = (generation, {image_id: _ranking_of(text) for image_id, text
                                        in zip(stored["image_id"], stored["candidates"])})
        return self._ahead[1]

    def rank_waiting(self, k: int = 5) -> int:
        """Rank every waiting photo ahead with the current model, :data:`RANK_BATCH` at a time,
        so that :meth:`identify` answers them at once (in any process: the rankings are stored
        in the catalog) and the queue can be ordered by need. Each batch is stored as it is done
        (:meth:`ranked_ahead` counts them); a change of the catalog meanwhile stops the work
        (what was ranked is stale). Returns how many were ranked."""
        generation = self.generation()
        ranked = dict(self.ranked_ahead())
        waiting = self.images().query("individual.isna()")
        waiting = waiting[~waiting["image_id"].isin(list(ranked))]
        if waiting.empty or not self.has_identified_photos():
            return 0
        identifier = self.identifier()
        from wildreid.progress import progress_bar

        with progress_bar("images", self.progress) as bar:
            task = bar.add_task("ranking the waiting photos ahead", total=len(waiting))
            for start in range(0, len(waiting), RANK_BATCH):
                query = self._frame(waiting.iloc[start:start + RANK_BATCH])
                candidates = identifier.predict_candidates(
                    query[["image_id", "filepath", "species"]], k=k)
                batch = {}
                for image_id, rows in candidates.groupby("image_id", sort=False):
                    batch[image_id] = self._described(rows, identifier)
                    batch[image_id].attrs["asked"] = k  # how many candidates were asked for
                with self._write(stales_the_model=False) as connection:
                    if _generation(connection) != generation:
                        return 0  # a decision came meanwhile: these rankings are stale
                    connection.execute("DELETE FROM ranked WHERE generation != ?", (generation,))
                    connection.executemany(
                        "INSERT OR REPLACE INTO ranked VALUES (?, ?, ?)",
                        [(image_id, generation, _ranking_text(rows))
                         for image_id, rows in batch.items()])
                ranked.update(batch)
                self._ahead = (generation, dict(ranked))
                bar.advance(task, len(query))
        return len(waiting)

    @contextmanager
    def _write(self, stales_the_model: bool = True):
        """A transaction. ``stales_the_model`` False: a write no model reads (a photo's notes),
        which leaves the fitted model and the candidates ranked ahead current."""
        connection = sqlite3.connect(self.database, timeout=30, isolation_level=None)
        try:
            connection.execute("BEGIN IMMEDIATE")  # one writer at a time, no lost update
            yield connection
            # Every other write moves the generation on, so a fitted model of an older catalog
            # (in this process or another) is known to be stale.
            if stales_the_model:
                connection.execute("INSERT OR IGNORE INTO settings VALUES ('generation', '0')")
                connection.execute("UPDATE settings SET value = CAST(value AS INTEGER) + 1 "
                                   "WHERE key = 'generation'")
            connection.execute("COMMIT")
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        finally:
            connection.close()

    def _read(self, query: str, parameters: tuple = ()) -> pd.DataFrame:
        with sqlite3.connect(self.database, timeout=30) as connection:
            return pd.read_sql_query(query, connection, params=parameters)

    def individuals(self) -> pd.DataFrame:
        return self._read("SELECT i.name, i.species, i.created, COUNT(p.image_id) AS photos "
                          "FROM individuals i LEFT JOIN images p ON p.individual = i.name "
                          "GROUP BY i.name ORDER BY i.name")

    def images(self, individual: str | None = None) -> pd.DataFrame:
        if individual is None:
            return self._read("SELECT * FROM images ORDER BY added, image_id")
        return self._read("SELECT * FROM images WHERE individual = ? ORDER BY added, image_id",
                          (individual,))

    def photo_path(self, image_id: str) -> Path:
        """The stored photo of ``image_id``; never a path outside the catalog."""
        rows = self._read("SELECT path FROM images WHERE image_id = ?", (image_id,))
        if rows.empty:
            raise CatalogError(f"no image {image_id!r} in the catalog")
        path = (self.folder / rows["path"].iloc[0]).resolve()
        if self.photos not in path.parents:
            raise CatalogError(f"image {image_id!r} points outside the catalog")
        return path

    def add_photo(self, source: str | Path, individual: str | None, species: str | None = None,
                  orientation: str | None = None, image_id: str | None = None,
                  max_pixels: int = MAX_PIXELS, date: str | None = None,
                  duplicate: bool = True, source_name: str | None = None) -> str:
        """Copy a photo in (checked first); ``individual`` None keeps it unassigned (a query).
        A new ``individual`` must not look like another of the species (:func:`skeletons`).
        ``duplicate`` False: a photo whose bytes the catalog already holds is refused
        (:class:`DuplicatePhoto`) instead of being added again under another id (an upload to
        identify may well be a photo the catalog holds). ``source_name``: the file name shown
        as the photo's source (``source``'s own name when not given; an upload's is the client's).

        The stored file is named by the hash of its bytes and the image type they hold, never by
        ``image_id`` or the source's name: ids are free text (``lion/7/a.jpg``) and never reach the
        file system."""
        source = Path(source)
        # A file name is what it is: kept as printable text, never refused for its characters.
        source_name = "".join(char for char in (source.name if source_name is None
                                                else source_name)
                              if char.isprintable())[:NOTE_LENGTH]
        try:  # decoded whole: a photo stored here must never fail later
            kind = image_format(source, max_pixels, PHOTO_FORMATS)
            load_image(source, max_pixels, PHOTO_FORMATS)
        except ImageError as error:
            raise CatalogError(str(error)) from None
        image_id = check_name(image_id, "image id") if image_id is not None else uuid.uuid4().hex[:12]
        individual = None if individual is None else check_name(individual)
        species = None if species is None or pd.isna(species) else check_name(species, "species")
        target = self.photos / f"{content_key(source)}{_SUFFIX[kind]}"
        stored = str(target.relative_to(self.folder))
        # A photo waiting for review changes no model: what was fitted and ranked ahead stays
        # current, and only the new photo is ranked.
        with self._write(stales_the_model=individual is not None) as connection:
            if connection.execute("SELECT 1 FROM images WHERE image_id = ?", (image_id,)).fetchone():
                raise CatalogError(f"image {image_id!r} is already in the catalog")
            if not duplicate:  # checked in the transaction: two imports cannot both add it
                same = connection.execute("SELECT image_id FROM images WHERE path = ? LIMIT 1",
                                          (stored,)).fetchone()
                if same is not None:
                    raise DuplicatePhoto(image_id, same[0])
            if individual is not None and not self._exists(connection, individual):
                self._check_lookalike(connection, individual, species)
            if not target.exists():  # the same bytes are stored once
                partial = self.photos / f".{uuid.uuid4().hex}.partial"
                shutil.copyfile(source, partial)
                with open(partial, "rb") as handle:
                    os.fsync(handle.fileno())
                os.replace(partial, target)
            if individual is not None:
                connection.execute("INSERT OR IGNORE INTO individuals VALUES (?, ?, ?)",
                                   (individual, species, _now()))
            connection.execute("INSERT INTO images (image_id, individual, species, orientation, "
                               "path, added, date, source) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                               (image_id, individual, species, orientation, stored, _now(),
                                date, source_name))
        return image_id

    @staticmethod
    def _exists(connection: sqlite3.Connection, name: str) -> bool:
        return connection.execute("SELECT 1 FROM individuals WHERE name = ?",
                                  (name,)).fetchone() is not None

    @staticmethod
    def _lookalike_of(connection: sqlite3.Connection, name: str, species: str | None) -> str | None:
        """The individual of ``species`` (None: those without one) that ``name`` looks like."""
        return lookalike(name, [row[0] for row in connection.execute(
            "SELECT name FROM individuals WHERE species IS ?", (species,))])

    @classmethod
    def _check_lookalike(cls, connection: sqlite3.Connection, name: str,
                         species: str | None) -> None:
        """:class:`CatalogError` when a new individual ``name`` looks like one the species has
        (``chimp_\u0405agu``, its S Cyrillic, beside ``chimp_Sagu``): a reviewer could confirm a
        photo to the wrong one."""
        existing = cls._lookalike_of(connection, name, species)
        if existing is not None:
            raise lookalike_error(name, existing, species)

    def check_species(self, species: str | None) -> str | None:
        """``species`` if the catalog can rank photos of it, else :class:`CatalogError`."""
        if species is None or not str(species).strip():
            return None
        known = self._read("SELECT DISTINCT species FROM individuals WHERE species IS NOT NULL "
                           "ORDER BY species")["species"].tolist()
        if str(species).strip() not in known:
            listed = ", ".join(known) if known else "none: leave the species blank"
            raise CatalogError(f"the catalog has no individuals of species "
                               f"{str(species)[:60]!r} (species it has: {listed})")
        return str(species).strip()

    def add_dataset(self, data_dir: str | Path, metadata: str | Path | None = None,
                    queries: bool = True) -> Imported:
        """Import a dataset (AnimalCLEF folder or folder tree): its database photos with their
        identities, and (``queries``) its query photos as photos waiting for a decision. Names
        are all checked before anything is copied (new names that look like another of their
        species included); ids already in the catalog are skipped and returned, and so are
        photos whose bytes the catalog already holds (the same dataset in another layout, a
        photo listed twice)."""
        dataset = load_dataset(data_dir, metadata)
        parts = [dataset.database.assign(identity=dataset.database["identity"].astype(str))]
        if queries:
            parts.append(dataset.query.assign(identity=None))
        rows = pd.concat(parts, ignore_index=True).astype(object)
        if "species" not in rows.columns:
            rows["species"] = None
        individuals = self.individuals()
        # Per species, the skeletons of each name it has or this import brings: a new name with
        # a skeleton taken looks like another.
        looks: dict[str | None, dict[str, str]] = {}
        for name, species in zip(individuals["name"], individuals["species"]):
            for key in skeletons(name):
                looks.setdefault(None if pd.isna(species) else species, {})[key] = name
        existing = set(individuals["name"])
        problems = []
        for row in rows.itertuples():
            try:
                check_name(row.image_id, "image id")
                if row.identity is None:
                    continue
                name = check_name(row.identity)
                species = None if pd.isna(row.species) else check_name(row.species, "species")
                if name in existing:
                    continue  # photos of an individual the catalog has: no new name
                taken = looks.setdefault(species, {})
                for key in skeletons(name):
                    if taken.setdefault(key, name) != name:
                        raise lookalike_error(name, taken[key], species)
            except CatalogError as error:
                problems.append(f"image {row.image_id!r}: {error}")
        if problems:
            shown = "\n  ".join(problems[:20])
            more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
            raise CatalogError(f"{dataset.source}: {len(problems)} rows cannot be imported; fix "
                               f"them and run again (nothing was added):\n  {shown}{more}")
        known = set(self.images()["image_id"])
        added, waiting, skipped, duplicates = 0, 0, [], {}
        for row in rows.itertuples():
            if str(row.image_id).strip() in known:
                skipped.append(str(row.image_id))
                continue
            optional = {name: None if name not in rows.columns or pd.isna(getattr(row, name))
                        else str(getattr(row, name)) for name in ("species", "orientation", "date")}
            try:
                self.add_photo(row.filepath, row.identity, optional["species"],
                               optional["orientation"], str(row.image_id), date=optional["date"],
                               duplicate=False)
            except DuplicatePhoto as error:
                duplicates[str(row.image_id)] = error.existing
                continue
            added += row.identity is not None
            waiting += row.identity is None
        return Imported(added, skipped, waiting, duplicates)

    def identifier(self, leave_out: str | None = None):
        """The catalog's fitted :class:`~wildreid.pipeline.Identifier` (features cached on disk).
        After decisions that only add identified photos, it is grown in place
        (:meth:`~wildreid.pipeline.Identifier.partial_fit`: only the new photos are described,
        and with the accurate preset their keypoints found), not fitted again; it is fitted
        again after any other change (undo, merge, reassignment) and once the identified photos
        grew by a tenth since the last fit (thresholds and calibration follow). ``leave_out``
        an image id: one fitted without that photo (to rank an already identified photo
        against the others), not kept."""
        from wildreid.pipeline import Identifier
        from wildreid.rerank import LocalReranking, preset_reranking

        with self._lock:
            generation = self.generation()  # read first: a write during the fit makes it stale
            labelled = self.images().dropna(subset=["individual"])
            labelled = labelled[labelled["image_id"] != leave_out]
            if labelled["individual"].nunique() < 1:
                raise CatalogError("the catalog has no identified photos yet")
            current = dict(zip(labelled["image_id"], labelled["individual"]))
            calibrated = labelled["individual"].nunique() >= 3  # thresholds need a few
            if leave_out is None and self._identifier is not None:
                fitted_at, model, fitted, fitted_size, fitted_calibrated = self._identifier
                if fitted_at == generation:
                    return model
                added = labelled[~labelled["image_id"].isin(list(fitted))]
                only_added = all(current.get(i) == name for i, name in fitted.items())
                if (only_added and calibrated == fitted_calibrated
                        and len(current) <= 1.1 * fitted_size):
                    model.partial_fit(self._frame(added))
                    self._identifier = (generation, model, current, fitted_size, calibrated)
                    return model
            local = preset_reranking(self.preset) if calibrated else None
            identifier = Identifier(threshold="auto" if calibrated else None,
                                    cache_dir=self.cache, progress=self.progress,
                                    reranking=None if local is None else LocalReranking(**local)
                                    ).fit(self._frame(labelled))
            if leave_out is None:
                self._identifier = (generation, identifier, current, len(current), calibrated)
            return identifier

    def _frame(self, images: pd.DataFrame) -> pd.DataFrame:
        """Catalog photos as the pipeline reads them (with their dates: thresholds are fitted on
        whole sightings where photos have them)."""
        return pd.DataFrame({"image_id": images["image_id"].astype(str).to_numpy(),
                             "filepath": [str(self.folder / p) for p in images["path"]],
                             "identity": images["individual"].to_numpy(),
                             "species": images["species"].to_numpy(),
                             "date": images["date"].to_numpy()})

    def identify(self, image_id: str, k: int = 5) -> pd.DataFrame:
        """Ranked candidate individuals (``rank, identity, score, image``: the photo whose pair
        gave the score) for a catalog photo. The photo
        is left out of what it is compared with by its id (an identical photo of an individual
        stays a candidate, with its score of 1)."""
        rows = self.images()
        row = rows[rows["image_id"] == image_id]
        if row.empty:
            raise CatalogError(f"no image {image_id!r} in the catalog")
        ahead = self.ranked_ahead().get(image_id)
        if ahead is not None and ahead.attrs.get("asked", 0) >= k:
            shown = ahead.head(k)
            shown.attrs = dict(ahead.attrs)
            return shown
        query = pd.DataFrame({"image_id": [image_id], "filepath": [str(self.photo_path(image_id))],
                              "species": row["species"].tolist()})
        assigned = row["individual"].notna().iloc[0]
        identifier = self.identifier(leave_out=image_id if assigned else None)
        candidates = identifier.predict_candidates(query, k=k)
        return self._described(candidates, identifier, row["species"].iloc[0])

    @staticmethod
    def _described(candidates: pd.DataFrame, identifier, species=None) -> pd.DataFrame:
        """One photo's ranked candidates as :meth:`identify` gives them, with the threshold of
        the species it was compared in (its own, or the router's for a photo without one)."""
        species = candidates["species"].iloc[0] if len(candidates) else species
        threshold = identifier.decision_.threshold_for(species)
        # ``image``: the photo of each candidate whose pair gave its score (what is drawn).
        ranked = candidates[["rank", "identity", "score", "image"]].reset_index(drop=True)
        ranked.attrs["threshold"] = None if not np.isfinite(threshold) else float(threshold)
        ranked.attrs["species"] = None if species is None or pd.isna(species) else str(species)
        ranked.attrs["species_predicted"] = bool(len(candidates)) and (
            candidates["species_source"].iloc[0] == "predicted")
        return ranked

    @staticmethod
    def verdict(ranked: pd.DataFrame, species: str | None = None) -> str:
        """What the system would answer, in words, from :meth:`identify`'s candidates."""
        if ranked.empty:
            return "no candidates: the catalog has no individuals of this species yet"
        best, score = ranked["identity"].iloc[0], float(ranked["score"].iloc[0])
        threshold = ranked.attrs.get("threshold")
        where = f"{species}'s" if species else "the"
        if threshold is None:
            return (f"most like {best} ({score:.2f}); too few individuals for a new-individual "
                    "threshold yet")
        shown_score, shown_threshold = _told_apart(score, threshold)
        if score >= threshold:
            return (f"likely {best}: {shown_score}, at or over {where} threshold "
                    f"{shown_threshold}")
        return (f"probably a new individual: the best, {best}, scores {shown_score}, under "
                f"{where} threshold {shown_threshold}")

    def draw_matches(self, image_id: str, individual: str, photo: str | None = None,
                     drawn: bool = True):
        """The photo's local matches with ``photo`` (one of the individual's photos: the one whose
        pair gave the candidate its score, as :meth:`identify` names it), or without one with
        the individual's best-matching photo. Drawn with the catalog preset's local features
        (ALIKED + LightGlue on the animal for the fast preset, which has none); keypoints cached
        in the catalog. A :class:`~wildreid.report.MatchPanel` (JPEG data URI unless ``drawn``
        is False, match count, strength, the photo matched and the matched points)."""
        from wildreid.defaults import PRESETS
        from wildreid.report import match_panels

        photos = self.images(individual)
        if photos.empty:
            raise CatalogError(f"no photos of individual {individual!r}")
        if photo is not None and photo not in set(photos["image_id"]):
            raise CatalogError(f"{photo!r} is not a photo of individual {individual!r}")
        database = self._frame(photos)
        shown = self.images()
        species = shown.loc[shown["image_id"] == image_id, "species"].tolist()[:1] or [None]
        # With its species: keypoints are kept where the identifier chose for that species.
        query = pd.DataFrame({"image_id": [image_id],
                              "filepath": [str(self.photo_path(image_id))], "species": species})
        candidates = pd.DataFrame({"image_id": [image_id], "identity": [individual],
                                   "image": [photo or ""]})
        preset = PRESETS.get(self.preset) or {}
        fitted = self._identifier[1] if self._identifier is not None else None
        reranking = getattr(fitted, "reranking_", None)
        info = {"local": list(preset.get("features") or ["aliked"]),
                "max_keypoints": preset.get("max_keypoints", 512),
                "long_side": preset.get("long_side", 512),
                # Where the fitted identifier chose to keep keypoints, per species.
                "keypoints_on": "animal" if reranking is None else reranking.keypoints_on_}
        panels = match_panels(info, database, query, candidates, "auto", self.cache, drawn=drawn)
        return panels[(image_id, individual)]

    @staticmethod
    def _undecided(connection: sqlite3.Connection, image_id: str, reassign: bool) -> tuple:
        """The photo's (species, individual) row, checked to be open to a decision."""
        row = connection.execute("SELECT species, individual FROM images WHERE image_id = ?",
                                 (image_id,)).fetchone()
        if row is None:
            raise CatalogError(f"no image {image_id!r} in the catalog")
        if row[1] is not None and not reassign:
            raise DecisionConflict(f"image {image_id!r} is already assigned to {row[1]!r}; "
                                   "reassign it explicitly to change that")
        return row

    def confirm(self, image_id: str, individual: str, reassign: bool = False) -> None:
        """Assign the photo (not yet decided, unless ``reassign``) to an existing individual."""
        with self._write() as connection:
            if not self._exists(connection, individual):
                names = [row[0] for row in connection.execute("SELECT name FROM individuals")]
                meant = lookalike(individual, names)
                raise CatalogError(f"no individual {individual!r}" + (
                    f" (it looks like {meant!r}, which exists: check the name)" if meant
                    else "; create a new one instead"))
            previous = self._undecided(connection, image_id, reassign)[1]
            connection.execute("UPDATE images SET individual = ? WHERE image_id = ?",
                               (individual, image_id))
            connection.execute("INSERT INTO decisions (image_id, individual, kind, created, "
                               "previous) VALUES (?, ?, 'confirm', ?, ?)",
                               (image_id, individual, _now(), previous))

    def new_individual(self, image_id: str, name: str | None = None,
                       reassign: bool = False) -> str:
        """Declare the photo (not yet decided, unless ``reassign``) a new individual; returns its
        name."""
        name = None if name is None else check_name(name)
        with self._write() as connection:
            row = self._undecided(connection, image_id, reassign)
            name = self._new_name(connection, row[0], name)
            connection.execute("INSERT INTO individuals VALUES (?, ?, ?)", (name, row[0], _now()))
            connection.execute("UPDATE images SET individual = ? WHERE image_id = ?",
                               (name, image_id))
            connection.execute("INSERT INTO decisions (image_id, individual, kind, created, "
                               "previous) VALUES (?, ?, 'new', ?, ?)",
                               (image_id, name, _now(), row[1]))
        return name

    @classmethod
    def _new_name(cls, connection: sqlite3.Connection, species: str | None,
                  name: str | None) -> str:
        """``name`` checked to be free and unlike the species' other names, or a free
        ``<species>_<number>`` (unlike them too: someone may have named one ``lion_OO12``)."""
        if name is not None:
            if cls._exists(connection, name):
                raise CatalogError(f"individual {name!r} already exists")
            cls._check_lookalike(connection, name, species)
            return name
        count = connection.execute("SELECT COUNT(*) FROM individuals").fetchone()[0]
        while True:
            count += 1
            name = f"{species or 'individual'}_{count:04d}"
            if not cls._exists(connection, name) and cls._lookalike_of(
                    connection, name, species) is None:
                return name

    def new_group(self, image_ids: Sequence[str], name: str | None = None) -> str:
        """Declare several waiting photos one new individual, in one decision (one undo); the
        photos must be of one species. Returns the individual's name."""
        image_ids = list(dict.fromkeys(str(i) for i in image_ids))
        if len(image_ids) < 2:
            raise CatalogError("a group needs two photos or more (one photo: new individual)")
        name = None if name is None else check_name(name)
        with self._write() as connection:
            rows = [self._undecided(connection, image_id, False) for image_id in image_ids]
            species = {row[0] for row in rows}
            if len(species) > 1:
                raise CatalogError("the photos of one individual are of one species, not of "
                                   f"{', '.join(sorted(str(s) for s in species))}")
            name = self._new_name(connection, rows[0][0], name)
            connection.execute("INSERT INTO individuals VALUES (?, ?, ?)", (name, rows[0][0], _now()))
            connection.executemany("UPDATE images SET individual = ? WHERE image_id = ?",
                                   [(name, image_id) for image_id in image_ids])
            connection.execute("INSERT INTO decisions (image_id, individual, kind, created, "
                               "detail) VALUES (?, ?, 'group', ?, ?)",
                               (image_ids[0], name, _now(), json.dumps({"photos": image_ids})))
        return name

    def proposed_groups(self) -> list[dict]:
        """Waiting photos the identifier would answer ``new_individual``, grouped as
        ``wildreid identify --cluster-new`` groups them (cut fitted on the catalog's identified
        photos): each group of two photos or more as ``{"species", "photos"}``, largest first.
        Empty while the catalog has too few individuals with two photos to fit the cut."""
        waiting = self.images()
        waiting = waiting[waiting["individual"].isna()]
        if waiting.empty:
            return []
        identifier = self.identifier()
        if identifier.decision_.threshold_for(None) == -np.inf:
            return []  # too few individuals for a new_individual threshold yet
        with self._lock:
            generation = self.generation()
            if self._grouping is None or self._grouping[0] != generation:
                labelled = self.images().dropna(subset=["individual"])
                try:
                    identifier.fit_grouping(self._frame(labelled))
                except ValueError:
                    return []
                self._grouping = (generation, identifier.grouping_)
            identifier.grouping_ = self._grouping[1]
        queries = self._frame(waiting)
        candidates, features = identifier.candidates_and_descriptors(queries, k=1)
        answers = identifier.group_new(queries, identifier.decide(candidates), features)
        answers = answers.assign(species=queries["species"].to_numpy())
        grouped = answers[is_proposed(answers["identity"])]
        groups = [{"species": None if pd.isna(part["species"].iloc[0]) else part["species"].iloc[0],
                   "photos": part["image_id"].tolist()}
                  for _, part in grouped.groupby("identity", sort=False) if len(part) > 1]
        return sorted(groups, key=lambda group: -len(group["photos"]))

    def decisions(self) -> pd.DataFrame:
        """The decision log, oldest first (undone decisions stay, marked ``undone``)."""
        return self._read("SELECT * FROM decisions ORDER BY id")

    def merge(self, source: str, target: str) -> int:
        """Move every photo of individual ``source`` to ``target`` (a reviewer found they are
        one animal) and remove ``source``; returns how many photos moved. Undoable."""
        if source == target:
            raise CatalogError("an individual cannot be merged into itself")
        with self._write() as connection:
            found = {name: connection.execute("SELECT species, created FROM individuals WHERE "
                                              "name = ?", (name,)).fetchone()
                     for name in (source, target)}
            for name, row in found.items():
                if row is None:
                    raise CatalogError(f"no individual {name!r}")
            if found[source][0] != found[target][0]:
                raise CatalogError(f"{source!r} is a {found[source][0]}, {target!r} a "
                                   f"{found[target][0]}: individuals of two species are not merged")
            moved = [r[0] for r in connection.execute(
                "SELECT image_id FROM images WHERE individual = ? ORDER BY image_id", (source,))]
            connection.execute("UPDATE images SET individual = ? WHERE individual = ?",
                               (target, source))
            connection.execute("DELETE FROM individuals WHERE name = ?", (source,))
            detail = json.dumps({"source": source, "species": found[source][0],
                                 "created": found[source][1], "moved": moved})
            connection.execute("INSERT INTO decisions (image_id, individual, kind, created, "
                               "previous, detail) VALUES ('', ?, 'merge', ?, ?, ?)",
                               (target, _now(), source, detail))
        return len(moved)

    def undo(self) -> dict:
        """Undo the latest decision not undone yet (confirm, new individual or merge): the
        photos go back where they were, an individual the decision created is removed. The
        decision stays in the log, marked undone, and the undo is logged too. Returns what was
        undone (``kind``, ``image_id``, ``individual``)."""
        with self._write() as connection:
            row = connection.execute(
                "SELECT id, kind, image_id, individual, previous, detail FROM decisions "
                "WHERE undone = 0 AND kind IN ('confirm', 'new', 'merge', 'group') ORDER BY id DESC "
                "LIMIT 1").fetchone()
            if row is None:
                raise CatalogError("nothing to undo")
            number, kind, image_id, individual, previous, detail = row
            if kind == "group":  # the photos wait again, the individual goes
                connection.executemany(
                    "UPDATE images SET individual = NULL WHERE image_id = ? AND individual = ?",
                    [(i, individual) for i in json.loads(detail)["photos"]])
                connection.execute("DELETE FROM individuals WHERE name = ?", (individual,))
            elif kind == "merge":
                moved = json.loads(detail)
                connection.execute("INSERT INTO individuals VALUES (?, ?, ?)",
                                   (moved["source"], moved["species"], moved["created"]))
                connection.executemany(
                    "UPDATE images SET individual = ? WHERE image_id = ? AND individual = ?",
                    [(moved["source"], i, individual) for i in moved["moved"]])
            else:
                connection.execute("UPDATE images SET individual = ? WHERE image_id = ?",
                                   (previous, image_id))
                if kind == "new" and not connection.execute(
                        "SELECT 1 FROM images WHERE individual = ?", (individual,)).fetchone():
                    connection.execute("DELETE FROM individuals WHERE name = ?", (individual,))
            connection.execute("UPDATE decisions SET undone = 1 WHERE id = ?", (number,))
            connection.execute("INSERT INTO decisions (image_id, individual, kind, created, "
                               "detail) VALUES (?, ?, 'undo', ?, ?)",
                               (image_id, individual, _now(), json.dumps({"undid": number})))
        return {"kind": kind, "image_id": image_id, "individual": individual}

    def reviewed(self) -> int:
        """Photos decided in review (confirmed, made new individuals or groups, not undone)."""
        decided = self._read("SELECT image_id, kind, detail FROM decisions WHERE kind IN "
                             "('confirm', 'new', 'group') AND undone = 0")
        photos = set(decided.loc[decided["kind"] != "group", "image_id"])
        for detail in decided.loc[decided["kind"] == "group", "detail"]:
            photos.update(json.loads(detail)["photos"])
        assigned = self.images().dropna(subset=["individual"])["image_id"]
        return len(photos & set(assigned))

    def individual(self, name: str) -> dict:
        """An individual's page: species (the individual's, else its photos'), photos (ids, in
        timeline order), photo count, first and last date (only from the photos' own dates:
        the day a photo was imported is not a sighting; ``None`` when no photo has one), how
        many photos are dated, orientations, and ``sightings``: per photo its id, date,
        orientation, source file name, location, notes and when it was added, dated photos
        first, oldest first."""
        found = self._read("SELECT name, species, created FROM individuals WHERE name = ?",
                           (name,))
        if found.empty:
            raise CatalogError(f"no individual {name!r}")
        photos = self.images(name)
        photos = photos.iloc[np.lexsort((photos["added"].astype(str).to_numpy(),
                                         photos["date"].fillna("").astype(str).to_numpy(),
                                         photos["date"].isna().to_numpy()))]
        dates = photos["date"].dropna().astype(str).sort_values()
        species = found["species"].iloc[0]
        if species is None or pd.isna(species):
            known = photos["species"].dropna()
            species = known.mode().iloc[0] if len(known) else None
        columns = ("image_id", "date", "orientation", "source", "location", "notes", "added")
        sightings = [{key: (None if pd.isna(value) else str(value)) for key, value in
                      zip(columns, row)} for row in photos[list(columns)].itertuples(index=False)]
        return {"name": name, "species": species,
                "created": found["created"].iloc[0], "photos": photos["image_id"].tolist(),
                "count": len(photos), "first": dates.iloc[0] if len(dates) else None,
                "last": dates.iloc[-1] if len(dates) else None, "dated": len(dates),
                "orientations": sorted(photos["orientation"].dropna().unique().tolist()),
                "sightings": sightings}

    def describe_photo(self, image_id: str, location: str | None = None,
                       notes: str | None = None) -> dict:
        """Set a photo's ``location`` and ``notes`` (``None`` leaves one as it is, ``""`` clears
        it; each at most :data:`NOTE_LENGTH` characters of text). The change is logged as a
        decision (``describe``, with what was there before), as every edit of the catalog is.
        Returns the photo's sighting fields now."""
        values = {"location": location, "notes": notes}
        changed = {key: _note(value, key) for key, value in values.items() if value is not None}
        with self._write(stales_the_model=False) as connection:
            row = connection.execute("SELECT individual, location, notes FROM images WHERE "
                                     "image_id = ?", (image_id,)).fetchone()
            if row is None:
                raise CatalogError(f"no image {image_id!r} in the catalog")
            before = {"location": row[1], "notes": row[2]}
            after = {**before, **{key: value or None for key, value in changed.items()}}
            connection.execute("UPDATE images SET location = ?, notes = ? WHERE image_id = ?",
                               (after["location"], after["notes"], image_id))
            connection.execute("INSERT INTO decisions (image_id, individual, kind, created, "
                               "detail) VALUES (?, ?, 'describe', ?, ?)",
                               (image_id, row[0] or "", _now(),
                                json.dumps({"before": before, "after": after})))
        return {"image_id": image_id, **after}

    def export(self, output: str | Path) -> Path:
        """The catalog as an AnimalCLEF ``metadata.csv`` at ``output`` (paths relative to it):
        identified photos as the database, waiting ones as queries; ready for ``identify``,
        ``train`` and ``evaluate``. Written as :meth:`metadata_csv` writes it."""
        output = Path(output).resolve()
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(self.metadata_csv(output.parent), encoding="utf-8", newline="")
        return output

    def metadata_csv(self, base: str | Path | None) -> str:
        """:meth:`metadata` as CSV text, safe to open in a spreadsheet: every export (the
        command's, the app's) is this text. Cells that would start a formula are led by ``'``
        (:func:`csv_safe`; an id ``=x`` is exported as ``'=x``), and text cells are quoted, so a
        carriage return inside one cannot end its row."""
        return csv_safe(self.metadata(base)).to_csv(index=False, quoting=csv.QUOTE_NONNUMERIC)

    def metadata(self, base: str | Path | None) -> pd.DataFrame:
        """The catalog's photos as AnimalCLEF metadata rows, paths relative to ``base``
        (``None``: absolute, for a file that lands where the catalog is not, as a download)."""
        images = self.images()
        return pd.DataFrame({
            "image_id": images["image_id"],
            "identity": images["individual"],
            "path": [str((self.folder / p).resolve()) if base is None
                     else _relative(self.folder / p, base) for p in images["path"]],
            "date": images["date"], "orientation": images["orientation"],
            "species": images["species"],
            "split": np.where(images["individual"].notna(), "database", "query"),
            "dataset": self.folder.name,
        })
