"""The species router: a species for queries that have none (a blank ``species``, photos dropped
in ``query/``), predicted from the database before anything per species is done with them.

A query's species is voted by its nearest database identities (by global descriptor, over all
species): the ``neighbours`` most similar identities each vote with their cosine for their
species; the winner's share of the votes is the confidence. The predicted species then chooses
the database the query is compared with, its ``new_individual`` threshold and its grouping cut.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from wildreid.ranking import nearest_images


def blank_species(images: pd.DataFrame) -> np.ndarray:
    """Which rows have no species (no column, empty or missing value)."""
    if "species" not in images.columns:
        return np.ones(len(images), bool)
    values = images["species"]
    return (values.isna() | (values.astype(str).str.strip() == "")).to_numpy()


@dataclass
class SpeciesRouter:
    """Fitted on the database's descriptors, identities and species (``fit``)."""

    neighbours: int = 5

    def fit(self, features: np.ndarray, identities, species) -> SpeciesRouter:
        self.features_ = np.asarray(features, np.float32)
        self.identities_ = np.asarray(identities, dtype=object).astype(str)
        self.species_ = np.asarray([str(s) for s in species], dtype=object)
        return self

    def predict(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Predicted species and confidence (the winner's share of the votes, 0-1) per row."""
        species = np.unique(self.species_)
        if len(species) == 1:
            return (np.full(len(features), species[0], dtype=object),
                    np.ones(len(features), np.float32))
        # Enough images that the nearest `neighbours` distinct identities are among them.
        depth = min(len(self.features_), 20 * self.neighbours)
        rows, cosines = nearest_images(self.features_, None, features, None, depth)
        # One table of every (query, neighbour) row, nearest first: each query's first
        # `neighbours` distinct identities vote with their best cosine for their species.
        query, rank = np.nonzero(rows >= 0)
        owners = pd.DataFrame({"query": query,
                               "identity": self.identities_[rows[query, rank]],
                               "species": self.species_[rows[query, rank]],
                               "vote": np.maximum(cosines[query, rank], 0.0)})
        voters = owners.drop_duplicates(["query", "species", "identity"])
        voters = voters[voters.groupby("query").cumcount() < self.neighbours]
        votes = voters.groupby(["query", "species"], sort=True)["vote"].sum().reset_index()
        totals = votes.groupby("query")["vote"].transform("sum").to_numpy()
        counts = votes.groupby("query")["vote"].transform("size").to_numpy()
        # The winner: most votes, the first species by name on a tie (as idxmax over sorted).
        winners = votes.sort_values(["query", "vote"], ascending=[True, False], kind="stable")
        winners = winners.drop_duplicates("query")
        share = np.where(totals > 0, votes["vote"].to_numpy() / np.where(totals > 0, totals, 1),
                         1.0 / counts)
        predicted = np.empty(len(features), dtype=object)
        confidence = np.zeros(len(features), np.float32)
        predicted[winners["query"].to_numpy()] = winners["species"].to_numpy()
        confidence[winners["query"].to_numpy()] = share[winners.index.to_numpy()]
        return predicted, confidence
