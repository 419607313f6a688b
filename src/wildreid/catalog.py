"""A persistent catalog of individuals: SQLite records, photos copied in, features cached.

``Catalog.create(folder)`` then ``add_dataset(data_dir)`` imports the database photos of an
AnimalCLEF folder; ``identify(photo)`` ranks the catalog's individuals for a new photo;
``confirm(image_id, individual)`` or ``new_individual(image_id)`` records the decision and grows
the catalog. Features of catalog photos are cached by content under the catalog, so adding photos
never recomputes the others, and everything survives a restart. Writes run in SQLite transactions
(WAL), so concurrent requests cannot lose a decision.
"""

from __future__ import annotations

import shutil
import sqlite3
import threading
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from wildreid.data import load_dataset
from wildreid.images import check_image

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
"""


class CatalogError(ValueError):
    """A request the catalog cannot honour; the message says why."""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Catalog:
    """The catalog in ``folder``: ``catalog.sqlite``, ``photos/``, ``cache/``."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder).resolve()
        self.database = self.folder / "catalog.sqlite"
        if not self.database.is_file():
            raise CatalogError(f"{self.folder}: not a catalog (no catalog.sqlite); create one "
                               "with 'wildreid catalog init FOLDER'")
        self.photos = self.folder / "photos"
        self.cache = self.folder / "cache"
        self._identifier = None
        self._lock = threading.Lock()

    @classmethod
    def create(cls, folder: str | Path, preset: str = "fast") -> Catalog:
        """A new empty catalog; ``preset`` (``fast`` or ``accurate``, see ``wildreid identify``)
        sets how photos are ranked: ``accurate`` re-ranks by local matches and shows calibrated
        match probabilities."""
        from wildreid.pipeline import PRESETS

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

    def unassigned(self) -> list[str]:
        """Photos added without an individual (queries waiting for a decision)."""
        return self._read("SELECT image_id FROM images WHERE individual IS NULL ORDER BY added")[
            "image_id"].tolist()

    @contextmanager
    def _write(self):
        connection = sqlite3.connect(self.database, timeout=30, isolation_level=None)
        try:
            connection.execute("BEGIN IMMEDIATE")  # one writer at a time, no lost update
            yield connection
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
                  orientation: str | None = None, image_id: str | None = None) -> str:
        """Copy a photo in (checked first); ``individual`` None keeps it unassigned (a query)."""
        source = Path(source)
        problem = check_image(source)
        if problem:
            raise CatalogError(problem)
        image_id = image_id or uuid.uuid4().hex[:12]
        target = self.photos / f"{image_id}{source.suffix.lower() or '.jpg'}"
        shutil.copyfile(source, target)
        with self._write() as connection:
            if connection.execute("SELECT 1 FROM images WHERE image_id = ?", (image_id,)).fetchone():
                raise CatalogError(f"image {image_id!r} is already in the catalog")
            if individual is not None:
                connection.execute("INSERT OR IGNORE INTO individuals VALUES (?, ?, ?)",
                                   (individual, species, _now()))
            connection.execute("INSERT INTO images VALUES (?, ?, ?, ?, ?, ?)",
                               (image_id, individual, species, orientation,
                                str(target.relative_to(self.folder)), _now()))
        self._identifier = None
        return image_id

    def add_dataset(self, data_dir: str | Path, metadata: str | Path | None = None) -> int:
        """Import the database photos of a dataset (AnimalCLEF folder or folder tree)."""
        dataset = load_dataset(data_dir, metadata)
        known = set(self.images()["image_id"])
        added = 0
        for row in dataset.database.astype(object).itertuples():
            if str(row.image_id) in known:
                continue
            species = None if pd.isna(row.species) else row.species
            orientation = None if pd.isna(row.orientation) else row.orientation
            self.add_photo(row.filepath, str(row.identity), species, orientation, str(row.image_id))
            added += 1
        return added

    def identifier(self):
        """The catalog's fitted :class:`~wildreid.pipeline.Identifier` (features cached on disk,
        refitted only after the catalog changed)."""
        from wildreid.pipeline import PRESETS, Identifier

        with self._lock:
            if self._identifier is None:
                labelled = self.images().dropna(subset=["individual"])
                if labelled["individual"].nunique() < 1:
                    raise CatalogError("the catalog has no identified photos yet")
                frame = pd.DataFrame({
                    "filepath": [str(self.folder / p) for p in labelled["path"]],
                    "identity": labelled["individual"], "species": labelled["species"]})
                threshold = "auto" if labelled["individual"].nunique() >= 3 else None
                settings = PRESETS[self.preset]
                if labelled["individual"].nunique() < 3:
                    settings = PRESETS["fast"]  # calibration needs a few individuals
                self._identifier = Identifier(threshold=threshold, cache_dir=self.cache,
                                              progress=False, **settings).fit(frame)
            return self._identifier

    def identify(self, image_id: str, k: int = 5) -> pd.DataFrame:
        """Ranked candidate individuals (``rank, identity, score``) for a catalog photo."""
        rows = self.images()
        row = rows[rows["image_id"] == image_id]
        if row.empty:
            raise CatalogError(f"no image {image_id!r} in the catalog")
        query = pd.DataFrame({"image_id": [image_id], "filepath": [str(self.photo_path(image_id))],
                              "species": row["species"].tolist()})
        identifier = self.identifier()
        candidates = identifier.predict_candidates(query, k=k + 1)
        candidates = candidates[candidates["score"] < 0.999999].head(k)  # not the photo itself
        return candidates[["rank", "identity", "score"]].reset_index(drop=True)

    def draw_matches(self, image_id: str, individual: str) -> str:
        """A JPEG data URI: the photo's local matches with the individual's best-matching photo
        (ALIKED on the animal + LightGlue; keypoints cached in the catalog)."""
        from wildreid.report import match_panels

        photos = self.images(individual)
        if photos.empty:
            raise CatalogError(f"no photos of individual {individual!r}")
        database = pd.DataFrame({"filepath": [str(self.folder / p) for p in photos["path"]],
                                 "identity": photos["individual"]})
        query = pd.DataFrame({"image_id": [image_id],
                              "filepath": [str(self.photo_path(image_id))]})
        candidates = pd.DataFrame({"image_id": [image_id], "identity": [individual]})
        info = {"local": ["aliked"], "max_keypoints": 512, "keypoints_on": "animal"}
        panels = match_panels(info, database, query, candidates, "auto", self.cache)
        return panels[(image_id, individual)]

    def confirm(self, image_id: str, individual: str) -> None:
        """Assign the photo to an existing individual."""
        with self._write() as connection:
            if not connection.execute("SELECT 1 FROM individuals WHERE name = ?",
                                      (individual,)).fetchone():
                raise CatalogError(f"no individual {individual!r}; create a new one instead")
            if not connection.execute("SELECT 1 FROM images WHERE image_id = ?",
                                      (image_id,)).fetchone():
                raise CatalogError(f"no image {image_id!r} in the catalog")
            connection.execute("UPDATE images SET individual = ? WHERE image_id = ?",
                               (individual, image_id))
            connection.execute("INSERT INTO decisions (image_id, individual, kind, created) "
                               "VALUES (?, ?, 'confirm', ?)", (image_id, individual, _now()))
        self._identifier = None

    def new_individual(self, image_id: str, name: str | None = None) -> str:
        """Declare the photo a new individual; returns its name."""
        with self._write() as connection:
            row = connection.execute("SELECT species FROM images WHERE image_id = ?",
                                     (image_id,)).fetchone()
            if row is None:
                raise CatalogError(f"no image {image_id!r} in the catalog")
            if name is None:
                count = connection.execute("SELECT COUNT(*) FROM individuals").fetchone()[0]
                name = f"{row[0] or 'individual'}_{count + 1:04d}"
                while connection.execute("SELECT 1 FROM individuals WHERE name = ?",
                                         (name,)).fetchone():
                    count += 1
                    name = f"{row[0] or 'individual'}_{count + 1:04d}"
            elif connection.execute("SELECT 1 FROM individuals WHERE name = ?",
                                    (name,)).fetchone():
                raise CatalogError(f"individual {name!r} already exists")
            connection.execute("INSERT INTO individuals VALUES (?, ?, ?)", (name, row[0], _now()))
            connection.execute("UPDATE images SET individual = ? WHERE image_id = ?",
                               (name, image_id))
            connection.execute("INSERT INTO decisions (image_id, individual, kind, created) "
                               "VALUES (?, ?, 'new', ?)", (image_id, name, _now()))
        self._identifier = None
        return name

    def decisions(self) -> pd.DataFrame:
        return self._read("SELECT * FROM decisions ORDER BY id")
