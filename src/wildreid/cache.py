"""On-disk cache of per-image arrays keyed by file content: safe against kills, sharing and damage.

Each namespace (one kind of array, e.g. a descriptor's cache key) is one SQLite file,
``ROOT/NAMESPACE/arrays.sqlite``, holding one row per key: the array's bytes, dtype and shape, and
a checksum over key, dtype, shape and bytes. SQLite (not a hand-written store) gives what a long
run and a shared cache need:

- a write is a transaction, committed with ``fsync`` (``synchronous=FULL``) before ``put``
  returns: a killed run loses at most the batch in flight and the next run resumes;
- several processes may read and write one cache at once (WAL journal; writers wait their turn),
  with no temporary files of ours that another process could delete;
- reads are by key, so memory stays bounded however large the cache grows.

Damage is found, reported by path and healed: a row whose checksum, dtype or shape is wrong (bytes
flipped, rows swapped, a wrong width) is dropped with a :class:`CacheDamaged` warning and counts as
missing, so the caller recomputes it; a file SQLite cannot read (truncated, emptied, overwritten)
is moved aside as ``arrays.sqlite.damaged-<time>`` and the namespace starts empty. Shards of the
older ``*.npz`` format are imported on open (a damaged one is reported and dropped).

A folder that cannot be used — read-only, not a folder, on a full or failing disk, at open or in
the middle of a run — is reported once (:class:`CacheUnavailable`, naming the folder and what to
do) and the run goes on: without the cache when it cannot be opened or read, else without writing
to it (what was written stays; the stages keep what they compute in memory instead).

The checksum finds damage, not forgery: it is not keyed, so whoever can write the cache can write
rows that pass it. A cache is trusted as the code that reads it is; share one only with those you
would let change your results.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sqlite3
import threading
import time
import warnings
import zipfile
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

FILE_NAME = "arrays.sqlite"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS arrays (
    key TEXT PRIMARY KEY, dtype TEXT NOT NULL, shape TEXT NOT NULL, value BLOB NOT NULL,
    checksum TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS layout (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
_BUSY_TIMEOUT_S = 120  # how long a connection waits for another process's lock
_CHUNK = 500  # keys per query, under SQLite's limit on bound parameters


class CacheDamaged(UserWarning):
    """Part of the cache was unreadable or inconsistent; it was dropped and will be recomputed."""


class CacheUnavailable(UserWarning):
    """The cache folder cannot be used (read-only, not a folder, full or failing disk): the run
    goes on without it, or without writing to it."""


#: Cache folders reported unusable by this process: one line each, not one per stage or batch.
_REPORTED: set[str] = set()


def content_key(path: str | Path) -> str:
    """Hash of the file's bytes: renaming or moving an image keeps its cached features."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def content_keys(paths: Iterable[str | Path], workers: int = 8) -> list[str]:
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(content_key, paths))


def _checksum(key: str, dtype: str, shape: str, value: bytes) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for part in (key.encode(), b"\0", dtype.encode(), b"\0", shape.encode(), b"\0", value):
        digest.update(part)
    return digest.hexdigest()


def _is_damage(error: sqlite3.DatabaseError) -> bool:
    """The file is not a readable database (truncated, overwritten...), as opposed to busy,
    read-only or out of space, which are reported as they are."""
    code = getattr(error, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)
    return any(word in str(error) for word in ("malformed", "not a database", "corrupt"))


def _is_busy(error: sqlite3.DatabaseError) -> bool:
    """Another connection holds the lock this one needs (worth waiting for)."""
    code = getattr(error, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    return "locked" in str(error) or "busy" in str(error)


def _is_unusable(error: BaseException) -> bool:
    """The folder or its disk refuses (read-only, full, not a folder, failing), as opposed to a
    damaged file (set aside) or a busy one (waited for): nothing this process can do helps."""
    if isinstance(error, OSError):
        return True
    if not isinstance(error, sqlite3.OperationalError):
        return False
    code = getattr(error, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_FULL, sqlite3.SQLITE_READONLY, sqlite3.SQLITE_CANTOPEN,
                               sqlite3.SQLITE_IOERR, sqlite3.SQLITE_PERM)
    return any(words in str(error) for words in ("disk is full", "readonly", "unable to open",
                                                 "disk I/O error", "permission"))


def _shape_text(shape: tuple[int, ...]) -> str:
    return ",".join(str(int(n)) for n in shape)


class ArrayCache:
    """Arrays of one kind (``namespace``) stored by content key, each row of one dtype and shape.

    ``fetch`` reads the rows asked for once and checks them, so a damaged row is reported and
    counts as missing before anyone relies on it. ``row_shape``, when the
    caller knows it (it may set it later, before the first read), is the shape every row must
    have: rows of another are damage, whatever the file says."""

    def __init__(self, root: str | Path, namespace: str,
                 row_shape: tuple[int, ...] | None = None):
        self.root = Path(root)
        self.folder = self.root / namespace
        self.path = self.folder / FILE_NAME
        self.row_shape = row_shape
        self._lock = threading.Lock()  # one connection, shared by the caller's threads
        self._imported = False
        #: Whether rows are written; ``False`` once the folder refused a write (or the open).
        self.writable = True
        self._connection: sqlite3.Connection | None = None  # None: nothing can be read either
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._connection = self._open()
        except (OSError, sqlite3.DatabaseError) as error:
            if not _is_unusable(error):
                raise
            self._give_up(error, reads=True)

    # -- the SQLite file -------------------------------------------------------------------
    def _open(self) -> sqlite3.Connection:
        # SQLite does not call its busy handler while another process switches the file to WAL
        # or recovers its journal (it answers "database is locked" at once), so two runs that
        # open one new cache together would fail: wait and retry, up to the same timeout.
        deadline = time.monotonic() + _BUSY_TIMEOUT_S
        pause = 0.01
        while True:
            connection = sqlite3.connect(self.path, timeout=_BUSY_TIMEOUT_S,
                                         isolation_level=None, check_same_thread=False)
            try:
                connection.execute("PRAGMA journal_mode=WAL")
                connection.execute("PRAGMA synchronous=FULL")
                connection.executescript(_SCHEMA)
                return connection
            except sqlite3.DatabaseError as error:
                connection.close()
                if _is_busy(error) and time.monotonic() < deadline:
                    time.sleep(pause)
                    pause = min(pause * 2, 0.5)
                    continue
                if not _is_damage(error):
                    raise
                self._set_aside(error)

    def _set_aside(self, error: Exception) -> None:
        aside = self.path.with_name(f"{FILE_NAME}.damaged-{time.strftime('%Y%m%d-%H%M%S')}-"
                                    f"{os.getpid()}")
        for suffix in ("", "-wal", "-shm"):
            source = self.path.with_name(FILE_NAME + suffix)
            if source.exists():
                os.replace(source, aside.with_name(aside.name + suffix))
        warnings.warn(f"{self.path}: the cache file is damaged ({error}); moved aside to {aside} "
                      "and starting empty: its arrays will be recomputed", CacheDamaged,
                      stacklevel=4)

    def _run(self, statement: str, parameters: Iterable = (), many: bool = False) -> list:
        """Run one statement (``many``: a write, of every row of ``parameters`` in one
        transaction); a file found damaged now is set aside and the statement rerun on a fresh
        one (reads then find nothing, so the caller recomputes). A folder that refuses is
        given up (:meth:`_give_up`): reads then find nothing and writes are skipped."""
        with self._lock:
            if self._connection is None or (many and not self.writable):
                return []
            for attempt in (0, 1):
                try:
                    if many:
                        self._connection.execute("BEGIN IMMEDIATE")
                        self._connection.executemany(statement, parameters)
                        self._connection.execute("COMMIT")
                        return []
                    return self._connection.execute(statement, tuple(parameters)).fetchall()
                except (sqlite3.DatabaseError, OSError) as error:
                    if self._connection.in_transaction:
                        with contextlib.suppress(sqlite3.DatabaseError):
                            self._connection.execute("ROLLBACK")
                    if _is_unusable(error):
                        self._give_up(error, reads=not many)
                        return []
                    if attempt or not _is_damage(error):
                        raise
                    self._connection.close()
                    try:
                        self._set_aside(error)
                        self._connection = self._open()
                    except (sqlite3.DatabaseError, OSError) as refused:
                        if not _is_unusable(refused):
                            raise
                        self._connection = None
                        self._give_up(refused, reads=True)
                        return []
            return []

    def _give_up(self, error: BaseException, reads: bool) -> None:
        """Stop writing to this cache (``reads``: and reading it) after the folder refused, and
        say so once per folder: the run goes on, computing what it cannot read or keep."""
        self.writable = False
        if reads and self._connection is not None:
            with contextlib.suppress(sqlite3.Error):
                self._connection.close()
            self._connection = None
        if str(self.root) in _REPORTED:
            return
        _REPORTED.add(str(self.root))
        lost = ("going on without it (nothing is read from or cached in it this run)" if reads
                else "going on without writing to it (what it holds is still read)")
        warnings.warn(f"{self.root}: the cache folder cannot be used ({error}); {lost}. Free "
                      "space or fix its permissions, or point --cache-dir (or $WILDREID_CACHE) "
                      "at a writable folder, or run without it (identify: cache = false in its "
                      "--settings file)", CacheUnavailable, stacklevel=4)

    # -- rows --------------------------------------------------------------------------------
    def _stored_layout(self) -> tuple[str, str] | None:
        """(dtype, shape) the file says its rows have."""
        if not self._imported:
            self._imported = True  # first, so the import's own writes do not import again
            try:
                self._import_npz_shards()
            except OSError as error:  # a shard that cannot be removed: a read-only folder
                self._give_up(error, reads=False)
        rows = dict(self._run("SELECT name, value FROM layout"))
        return (rows["dtype"], rows["shape"]) if "dtype" in rows else None

    def _layout(self) -> tuple[str, str] | None:
        """(dtype, shape) rows must have: the caller's ``row_shape`` wins over the file."""
        stored = self._stored_layout()
        if stored is None or self.row_shape is None:
            return stored
        return stored[0], _shape_text(self.row_shape)

    def _decode(self, row: tuple, layout: tuple[str, str] | None) -> np.ndarray | None:
        key, dtype, shape, value, checksum = row
        problem = None
        if _checksum(key, dtype, shape, value) != checksum:
            problem = "its checksum does not match its contents"
        elif layout is not None and (dtype, shape) != layout:
            problem = f"its shape {shape} ({dtype}) is not the cache's {layout[1]} ({layout[0]})"
        else:
            try:
                dims = tuple(int(n) for n in shape.split(",")) if shape else ()
                return np.frombuffer(value, dtype=np.dtype(dtype)).reshape(dims)
            except (TypeError, ValueError) as error:
                problem = f"it cannot be decoded ({error})"
        self._run("DELETE FROM arrays WHERE key = ?", [(key,)], many=True)
        warnings.warn(f"{self.path}: dropped the cached row of {key} ({problem}); it will be "
                      "recomputed", CacheDamaged, stacklevel=4)
        return None

    def fetch(self, keys: list[str]) -> dict[str, np.ndarray]:
        """The checked rows of those ``keys`` the cache holds, read once; damaged ones are
        dropped (with a warning) and left out, so the caller computes them."""
        keys = list(dict.fromkeys(keys))
        layout = self._layout()
        found: dict[str, np.ndarray] = {}
        for start in range(0, len(keys), _CHUNK):
            chunk = keys[start:start + _CHUNK]
            marks = ",".join("?" * len(chunk))
            for row in self._run("SELECT key, dtype, shape, value, checksum FROM arrays "
                                 f"WHERE key IN ({marks})", chunk):
                array = self._decode(row, layout)
                if array is not None:
                    found[row[0]] = array
        return found

    def present(self, keys: list[str]) -> set[str]:
        """Which of ``keys`` the cache holds a row for (not read, not checked: a damaged row is
        found, dropped and recomputed when it is fetched)."""
        keys = list(dict.fromkeys(keys))
        self._layout()
        found: set[str] = set()
        for start in range(0, len(keys), _CHUNK):
            chunk = keys[start:start + _CHUNK]
            marks = ",".join("?" * len(chunk))
            found.update(key for (key,) in self._run(
                f"SELECT key FROM arrays WHERE key IN ({marks})", chunk))
        return found

    def __len__(self) -> int:
        self._layout()
        counted = self._run("SELECT COUNT(*) FROM arrays")
        return counted[0][0] if counted else 0  # nothing counted: the cache was given up

    def put(self, keys: list[str], values: np.ndarray) -> None:
        """Store ``values`` (one row per key) durably before returning."""
        if not keys:
            return
        values = np.ascontiguousarray(values)
        if len(values) != len(keys):
            raise ValueError(f"{len(keys)} keys for {len(values)} rows")
        dtype, shape = values.dtype.str, _shape_text(values.shape[1:])
        if self.row_shape is not None and tuple(values.shape[1:]) != tuple(self.row_shape):
            raise ValueError(f"{self.path}: rows of shape {shape} given to a cache of rows "
                             f"{_shape_text(self.row_shape)}")
        layout = self._stored_layout()
        if layout is None:
            self._run("INSERT OR IGNORE INTO layout VALUES (?, ?)", [("dtype", dtype),
                                                                   ("shape", shape)], many=True)
            layout = self._stored_layout()
        if not self.writable:  # given up (now or before): the caller keeps its rows
            return
        if layout != (dtype, shape):  # rows computed now are right: older ones of another layout
            stale = self._run("SELECT COUNT(*) FROM arrays WHERE dtype != ? OR shape != ?",
                              (dtype, shape))[0][0]
            self._run("DELETE FROM arrays WHERE dtype != ? OR shape != ?", [(dtype, shape)],
                      many=True)
            self._run("INSERT OR REPLACE INTO layout VALUES (?, ?)", [("dtype", dtype),
                                                                    ("shape", shape)], many=True)
            warnings.warn(f"{self.path}: held rows of shape {layout[1]} ({layout[0]}), not the "
                          f"{shape} ({dtype}) computed now; dropped {stale} of them (they will be "
                          "recomputed)", CacheDamaged, stacklevel=2)
        records = []
        for key, row in zip(keys, values):
            value = row.tobytes()
            records.append((key, dtype, shape, value, _checksum(key, dtype, shape, value)))
        self._run("INSERT OR REPLACE INTO arrays VALUES (?, ?, ?, ?, ?)", records, many=True)

    def _import_npz_shards(self) -> None:
        """Bring shards of the older ``*.npz`` format in, then remove them. Their rows' layout is
        the one most rows share; a shard of another layout, or unreadable, is reported."""
        shards: list[tuple[Path, list[str], np.ndarray]] = []
        for shard in sorted(self.folder.glob("*.npz")):
            if shard.name.startswith("."):  # an older run's temporary file: never complete
                if time.time() - shard.stat().st_mtime > 3600:  # else perhaps being written
                    shard.unlink(missing_ok=True)
                continue
            try:
                with np.load(shard, allow_pickle=False) as data:
                    keys, values = [str(k) for k in data["keys"]], data["values"]
                if len(keys) != len(values):
                    raise ValueError(f"{len(keys)} keys for {len(values)} rows")
                shards.append((shard, keys, values))
            except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
                warnings.warn(f"{shard}: dropped a damaged cache shard ({error}); its arrays "
                              "will be recomputed", CacheDamaged, stacklevel=3)
                shard.unlink(missing_ok=True)
        if not shards:
            return
        counts: dict[tuple, int] = {}
        for _, keys, values in shards:
            counts[values.shape[1:]] = counts.get(values.shape[1:], 0) + len(keys)
        common = tuple(self.row_shape) if self.row_shape is not None else max(counts,
                                                                             key=counts.get)
        for shard, keys, values in shards:
            if values.shape[1:] == common:
                self.put(keys, values)
            else:
                warnings.warn(f"{shard}: dropped a cache shard of rows {values.shape[1:]}, not "
                              f"{common}; its arrays will be recomputed",
                              CacheDamaged, stacklevel=3)
            shard.unlink(missing_ok=True)

    def close(self) -> None:
        with self._lock:
            if self._connection is not None:
                self._connection.close()
