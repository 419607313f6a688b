"""Pseudo-queries carved from the database: what every choice fitted without query labels
(thresholds, calibration, the grouping's cut, a pipeline's selection) is measured on.

Some identities are held out whole (pseudo-unknowns), some images of the others are held out
(pseudo-known queries; whole sightings where the metadata gives dates, as real queries come), the
rest forms a pseudo-database.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass
class PseudoSplit:
    """Roles of database rows in one simulated open-set round."""

    reference: np.ndarray  # row indices forming the pseudo-database
    queries: np.ndarray  # row indices used as pseudo-queries
    unknown: np.ndarray  # per pseudo-query: its identity is absent from the reference


#: ``date`` values that mean "no date" (compared lower-case, stripped).
_NO_DATE = {"", "na", "n/a", "nan", "nat", "none", "null", "unknown", "?", "-"}
#: Fewer pseudo-known queries than this from whole sightings: held out photo by photo instead.
MIN_KNOWN_PSEUDO_QUERIES = 5


#: A date that starts year first (ISO ``2024-05-01``, EXIF ``2024:05:01 10:00:00``, ``2024/5/1``).
_YEAR_FIRST = re.compile(r"^(\d{4})[-:/.](\d{1,2})[-:/.](\d{1,2})(?!\d)")


def _day(value: str) -> str:
    """The day a date names, in its own time zone (each value read alone: a file may mix UTC
    offsets, e.g. across a change to summer time); the text itself where it is no date. Only
    equal days matter here, so an ambiguous ``01/02/2024`` need only be read one way."""
    year_first = _YEAR_FIRST.match(value)  # the day as written: in the photo's own time zone
    if year_first:
        year, month, day = (int(part) for part in year_first.groups())
        return f"{year:04d}-{month:02d}-{day:02d}"
    with warnings.catch_warnings():  # pandas warns about day-first guesses; any reading will do
        warnings.simplefilter("ignore")
        parsed = pd.to_datetime(value, errors="coerce")
    return value if pd.isna(parsed) else str(parsed.date())


def sightings_of(images: pd.DataFrame) -> np.ndarray | None:
    """Each image's sighting for :func:`pseudo_split`: the day its ``date`` names (any date pandas
    reads, in its own time zone; other text as written), a sighting of its own where it has no
    date (missing, blank, ``NA``, ``unknown``...); ``None`` when no image has a date. A
    sighting that runs past midnight counts as two."""
    if "date" not in images.columns:
        return None
    text = [None if pd.isna(value) or str(value).strip().lower() in _NO_DATE
            else str(value).strip() for value in images["date"]]
    if all(value is None for value in text):
        return None
    days = {value: _day(value) for value in dict.fromkeys(text) if value is not None}
    return np.array([f"row {row}" if value is None else days[value]
                     for row, value in enumerate(text)], dtype=object)


def pseudo_split(identities: np.ndarray, rng: np.random.Generator, unknown_fraction: float = 0.3,
                 query_fraction: float = 0.3, sightings: np.ndarray | None = None
                 ) -> PseudoSplit | None:
    """Hold out ``unknown_fraction`` of identities whole and ``query_fraction`` of the images of
    each remaining identity that has at least two; ``None`` when too few identities to simulate.

    ``sightings`` (one key per image, e.g. :func:`sightings_of`): ``query_fraction`` of each known
    identity's *sightings* are held out, every photo of a held sighting with it, as real queries
    come (AnimalCLEF's are later encounters): a pseudo-query never meets a photo of its own
    sighting, whose place and light would make the whole photo look more telling than it is on
    queries. An identity seen once gives no pseudo-known query; when whole sightings give fewer
    than :data:`MIN_KNOWN_PSEUDO_QUERIES` (few individuals seen twice), photos are held out one
    by one as without ``sightings``."""
    names = np.unique(identities)
    if len(names) < 3:
        return None
    if sightings is not None:
        sightings = np.asarray(sightings, dtype=object)
        if len(sightings) != len(identities):
            raise ValueError(f"{len(sightings)} sightings for {len(identities)} images")
    n_unknown = min(len(names) - 2, max(1, round(unknown_fraction * len(names))))
    unknown_names = set(rng.choice(names, n_unknown, replace=False))
    reference, queries, unknown = [], [], []
    for name in names:
        rows = rng.permutation(np.flatnonzero(identities == name))
        if name in unknown_names:
            queries.extend(rows)
            unknown.extend([True] * len(rows))
            continue
        seen_on = rows if sightings is None else sightings[rows]
        if len(np.unique(seen_on)) == len(rows):  # each photo a sighting: held out one by one
            held = min(len(rows) - 1, round(query_fraction * len(rows)))
            if held == 0 and len(rows) >= 2:
                held = 1
            held_rows, kept_rows = rows[:held], rows[held:]
        else:
            seen = rng.permutation(np.unique(seen_on))
            held = min(len(seen) - 1, max(1, round(query_fraction * len(seen))))
            out = np.isin(seen_on, seen[:held])
            held_rows, kept_rows = rows[out], rows[~out]
        queries.extend(held_rows)
        unknown.extend([False] * len(held_rows))
        reference.extend(kept_rows)
    if sightings is not None and len(unknown) - sum(unknown) < MIN_KNOWN_PSEUDO_QUERIES:
        return pseudo_split(identities, rng, unknown_fraction, query_fraction)
    if not any(unknown) or all(unknown):
        return None
    return PseudoSplit(np.array(reference), np.array(queries), np.array(unknown))
