"""Settings and values given per species: a setting for all species or per species
(``"crop"`` or ``"nyala=crop,lion=none"``), read once (:func:`parse_by_species`) and looked up
per image (:func:`by_species`); each row's species as a key (:func:`species_keys`)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd


def parse_by_species(text: str, choices: Sequence[str], what: str, example: str
                     ) -> str | dict[str | None, str]:
    """A setting for all species or per species: ``"crop"`` -> ``"crop"``;
    ``"nyala=crop,lion=none"`` (``"*=mask"`` for the rest) -> a dict by species."""
    if "=" not in text:
        value = text.strip()
        if value not in choices:
            raise ValueError(f"unknown {what} {value!r}; use {', '.join(choices)} or "
                             f"SPECIES=VALUE pairs such as {example!r}")
        return value
    values: dict[str | None, str] = {}
    for pair in text.split(","):
        species, _, value = pair.partition("=")
        values[None if species.strip() in ("*", "") else species.strip()] = parse_by_species(
            value, choices, what, example)
    return values


def by_species(setting: str | dict[str | None, str], species: Sequence, default: str
               ) -> np.ndarray:
    """The value of a per-species ``setting`` for each row's ``species`` (the ``None`` key, else
    ``default``, for species it does not name)."""
    values = dict(setting) if isinstance(setting, dict) else {None: setting}
    values.setdefault(None, default)
    return np.array([values.get(None if pd.isna(s) else str(s), values[None]) for s in species],
                    dtype=object)


def species_keys(species, count: int) -> np.ndarray:
    """Each row's species as a threshold key (``None`` where missing, or no species at all)."""
    if species is None:
        return np.full(count, None, dtype=object)
    return np.array([None if pd.isna(s) else str(s) for s in species], dtype=object)
