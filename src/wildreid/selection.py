"""Choose each species' pipeline on its own database: what ``--preset accurate`` runs.

A small, fixed menu of :class:`Candidate` pipelines (:data:`MENU`: the global cosine alone, which
is the fast preset; SIFT on the whole photo; SIFT on the animal; ALIKED nearest neighbours on the
animal; those then LightGlue on each query's best few) is tried per species on a **development
split carved from the database** (:func:`~wildreid.pseudo_queries.pseudo_split`: whole identities held
out as unknowns, whole sightings of the others as known queries), each fitted on the rest exactly
as a real run is. Each candidate's score is the task's own (sqrt(BAKS x BAUS); top-1 balanced
over identities for a closed set), and its gain over the cheaper choice comes with a standard
error (paired bootstrap over identities).

The rule (:func:`choose`), as scikit-learn's model selection would state it: walk the menu from
the cheapest; move to a dearer candidate only when it beats the one kept by more than two
standard errors. So the choice is never below the fast preset on the development split, and a
slow matcher must earn its time.

The time budget (:func:`default_budget`: what two CPU cores do in 15 minutes for 2,000 photos,
at least 5 minutes; ``budget`` seconds to change it) bounds the whole run, selection included.
A :class:`CostModel` measured on a few of the database's photos on the device at hand predicts
each candidate's seconds; a local candidate that would not fit with the shortlist asked for is tried with a
smaller one (50, then 20 photos per query), one that cannot fit at all is skipped (and said so),
and every prediction is corrected by what the candidates already run actually took.

Everything the selection saw is in ``evaluations_`` (:meth:`PipelineSelection.summary`, which
``run.json`` records): per species, each candidate's score, gain ± standard error, seconds,
predicted seconds, and why the choice fell where it did.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, clone

from wildreid.data import NEW_INDIVIDUAL
from wildreid.metrics import STANDARD_ERRORS, open_set_score, paired_gain
from wildreid.openset import OpenSetDecision
from wildreid.per_species import species_keys
from wildreid.pseudo_queries import pseudo_split, sightings_of
from wildreid.rerank import LocalReranking


@dataclass(frozen=True)
class Candidate:
    """One pipeline of the menu: its name and the parameters of its local re-ranking
    (:class:`~wildreid.rerank.LocalReranking`: ``features``, ``cascade``, ``keypoints_on``...);
    no ``features``: the cosine alone."""

    name: str
    settings: dict = field(default_factory=dict)

    @property
    def matchers(self) -> tuple[str, ...]:
        return tuple(self.settings.get("features", ()))

    def reranking(self, shared: LocalReranking):
        """Its local re-ranking: ``shared`` (the settings every candidate takes: shortlist,
        mirror, keypoints...) with its own over them; ``None`` for the cosine alone."""
        if not self.matchers:
            return None
        return clone(shared).set_params(**self.settings)

    @property
    def on_animal(self) -> bool:
        """Whether its keypoints are kept on the animal's mask (the segmenter runs first)."""
        return bool(self.matchers) and self.settings.get("keypoints_on") != "image"


#: The accurate preset's menu, cheapest first (the order :func:`choose` walks). Where keypoints
#: go is a candidate of its own rather than a choice inside each fit: the animal's mask costs a
#: segmentation of every photo (about 0.25 s each on two CPU cores), the whole photo nothing.
MENU: tuple[Candidate, ...] = (
    Candidate("cosine"),
    Candidate("sift/image", {"features": ("sift",), "keypoints_on": "image"}),
    Candidate("sift/animal", {"features": ("sift",), "keypoints_on": "animal"}),
    # Its confidences are 1 - ratio: matches above 0.5 rank almost nothing (decision 0008).
    Candidate("aliked-nn/animal", {"features": ("aliked-nn",), "keypoints_on": "animal",
                                   "pair_score": "inliers"}),
    Candidate("aliked-nn+lightglue/animal", {"features": ("aliked-nn", "aliked"), "cascade": 10,
                                             "keypoints_on": "animal", "pair_score": "inliers",
                                             "cascade_pair_score": "matches@0.5"}),
)

def with_settings(candidates: Sequence[Candidate], **fixed) -> tuple[Candidate, ...]:
    """``candidates`` with the settings a user fixed (e.g. ``keypoints_on``) in every local one,
    those that became the same pipeline once (the first one's name)."""
    found: dict[str, Candidate] = {}
    place = fixed.get("keypoints_on")
    for candidate in candidates:
        if candidate.matchers:
            name = candidate.name
            if isinstance(place, str):  # the name says where keypoints go
                name = f"{name.split('/')[0]}/{place}"
            candidate = Candidate(name, {**candidate.settings, **fixed})
        found.setdefault(repr(sorted(candidate.settings.items())), candidate)
    return tuple(found.values())


#: The default budget: 15 minutes for 2,000 photos (database and queries), per photo...
SECONDS_PER_PHOTO = 15 * 60 / 2000
#: ...and never under 5 minutes: choosing has a cost of its own, whatever the dataset's size.
MINIMUM_BUDGET = 5 * 60
#: Development queries per species (a random subset of the held-out ones beyond this): enough
#: for a standard error of a few points, few enough to leave the budget to the real run.
DEVELOPMENT_QUERIES = 200
#: Matchers that share another's keypoints (one extraction, cached).
_KEYPOINTS = {"aliked-nn": "aliked"}
#: Why whole-photo candidates are not tried on photos without dates. Held out photo by photo, a
#: pseudo-query still meets photos of its own encounter, whose background a whole-photo matcher
#: recognises: on nyala protocol A, SIFT on the whole photo scored 0.402 on the development split
#: and 0.048 on the real queries (other encounters); keypoints on the animal leave the background.
_UNDATED = ("no dates, so held-out photos meet their own encounter's background, which "
            "whole-photo matching would be credited for")
#: Smaller shortlists a local candidate falls back to when the one asked for would not fit the
#: budget: the cost of matching grows with the shortlist, the recall of the individual slowly.
_SMALLER_SHORTLISTS = (50, 20)
#: Pseudo-queries a local fit calibrates on, per species (``LocalReranking``'s default).
_CALIBRATION_QUERIES = 300


def default_budget(photos: int) -> float:
    """Seconds the accurate preset may take on ``photos`` photos when no budget is given."""
    return max(MINIMUM_BUDGET, SECONDS_PER_PHOTO * photos)


@dataclass
class DevelopmentSplit:
    """A species' database carved for choosing: ``reference`` photos to fit on, held-out
    ``queries`` with their ``truth`` identities, ``unknown`` for those whose identity the
    reference lacks; ``dated``: whether sightings (dates) kept each encounter on one side."""

    reference: pd.DataFrame
    queries: pd.DataFrame
    truth: np.ndarray
    unknown: np.ndarray
    dated: bool

    def score(self, answers: np.ndarray, closed_set: bool = False) -> tuple[np.ndarray, float]:
        """Whether each answer is right (an unknown's right answer is ``new_individual``; with
        ``closed_set`` every query is scored on its identity) and :func:`open_set_score`."""
        correct = np.where(self.unknown, answers == NEW_INDIVIDUAL, answers == self.truth)
        if closed_set:
            correct = answers == self.truth
        return correct, open_set_score(correct, self.truth, self.unknown, closed_set)


def development_split(images: pd.DataFrame, queries: int = DEVELOPMENT_QUERIES, seed: int = 0
                      ) -> DevelopmentSplit | None:
    """One species' photos (``images``) carved into a :class:`DevelopmentSplit`
    (:func:`~wildreid.pseudo_queries.pseudo_split`: whole identities held out as unknowns, whole
    sightings of the others as known queries; at most ``queries`` of them, drawn at random).
    ``None`` where the species has too few identities (under 6) to compare pipelines on."""
    identities = images["identity"].astype(str).to_numpy()
    rng = np.random.default_rng(seed)
    sightings = sightings_of(images)
    split = pseudo_split(identities, rng, sightings=sightings)
    if split is None or len(np.unique(identities)) < 6:
        return None
    held = np.arange(len(split.queries))
    if len(held) > queries:
        held = np.sort(rng.choice(held, queries, replace=False))
    return DevelopmentSplit(images.iloc[split.reference].reset_index(drop=True),
                            images.iloc[split.queries[held]].reset_index(drop=True),
                            identities[split.queries[held]], split.unknown[held],
                            sightings is not None)


@dataclass
class Evaluation:
    """One candidate on one species' development split."""

    candidate: str
    status: str  # "evaluated", or why not ("over budget", "no local evidence"...)
    score: float = float("nan")
    gain: float = float("nan")  # over the candidate kept before it was reached
    standard_error: float = float("nan")
    against: str | None = None
    seconds: float = 0.0
    predicted_seconds: float = float("nan")  # of the development run, before it ran
    run_seconds: float = float("nan")  # predicted for the species' real run
    shortlist: int | None = None  # database photos each query is matched with (None: all)
    correct: np.ndarray | None = None

    def row(self) -> dict:
        return {key: (None if isinstance(value, float) and not np.isfinite(value) else value)
                for key, value in self.__dict__.items() if key != "correct"}


def choose(evaluations: Sequence[Evaluation], identity: np.ndarray, unknown: np.ndarray,
           closed_set: bool = False, seed: int = 0) -> tuple[str, str]:
    """The candidate kept and why: walking ``evaluations`` in menu order (cheapest first), a
    dearer evaluated candidate replaces the kept one only when its paired gain exceeds
    :data:`STANDARD_ERRORS` standard errors. Fills each evaluation's ``gain``,
    ``standard_error`` and ``against``."""
    ran = [item for item in evaluations if item.status == "evaluated"]
    if not ran:
        raise ValueError("no candidate was evaluated")
    kept, reason = ran[0], f"{ran[0].candidate}: the cheapest"
    for item in ran[1:]:
        item.gain, item.standard_error = paired_gain(item.correct, kept.correct, identity,
                                                     unknown, closed_set, seed=seed)
        item.against = kept.candidate
        margin = STANDARD_ERRORS * item.standard_error
        if np.isfinite(margin) and item.gain > margin:
            kept = item
            matched = "" if item.shortlist is None and not item.candidate.count("/") else (
                f" (shortlist {item.shortlist or 'all'})")
            reason = (f"{item.candidate}{matched}: {item.score:.3f}, {item.gain:+.3f} ± "
                      f"{item.standard_error:.3f} over {item.against} (more than "
                      f"{STANDARD_ERRORS:g} standard errors)")
    untried = [f"{item.candidate} ({item.status})" for item in evaluations
               if item.status != "evaluated"]
    if untried:
        reason += "; not tried: " + ", ".join(untried)
    return kept.candidate, reason


def pair_key(matcher: str, ransac: bool) -> str:
    """The key of a matcher's seconds per pair in :class:`CostModel`, with or without RANSAC."""
    return f"{matcher}+ransac" if ransac else matcher


class CostModel:
    """Seconds per photo (keypoints) and per pair (matching) of each local matcher, measured on
    a few database photos on the device at hand; :meth:`predict` gives a candidate's seconds
    for a run of a given size. ``correction``: how much longer the last local candidate run took
    than predicted (regions, calibration, choices inside the fit), applied to later predictions."""

    def __init__(self, settings: dict, reranking: LocalReranking | None = None):
        self.settings = settings  # the identifier's: device, segmenter weights
        self.reranking = LocalReranking() if reranking is None else reranking
        self.photo_seconds: dict[str, float] = {}
        self.pair_seconds: dict[str, float] = {}
        self.region_seconds: float | None = None
        self.correction = 1.0

    def measure_regions(self, images: pd.DataFrame) -> None:
        """Time the segmenter (the animal's mask) on 4 of ``images``, after one to warm up."""
        if self.region_seconds is not None:
            return
        from wildreid.isolation import Isolator, Segmenter

        isolator = Isolator(lambda: Segmenter(self.settings.get("segmenter_weights"),
                                              device=self.settings.get("device", "auto")),
                            cache_dir=None, progress=False)
        sample = images.iloc[:5]
        isolator(sample.iloc[-1:], "cost")
        start = time.perf_counter()
        isolator(sample.iloc[:-1], "cost")
        self.region_seconds = (time.perf_counter() - start) / max(len(sample) - 1, 1)

    def measure(self, matchers: Sequence[str], images: pd.DataFrame,
                ransac: Sequence[str] = ()) -> None:
        """Time each matcher not measured yet on 4 of ``images`` (12 pairs), after one photo and
        one pair to warm up: loading a network or a first call is paid once per run, not per
        photo. Matchers of one keypoint method (``aliked-nn``, ``aliked``) share its photos.
        Those in ``ransac`` are timed with RANSAC as well (:func:`pair_key`), which a candidate
        that calibrates inliers pays on every pair."""
        from wildreid.matching import score_pairs
        from wildreid.scorers import LocalScorer

        sample = images.iloc[:5]
        pairs = np.array([(a, b) for a in range(len(sample) - 1) for b in range(len(sample) - 1)
                          if a != b], np.int64)
        extracted: dict[str, list] = {}
        for name in matchers:
            if name in self.pair_seconds:
                continue
            method = _KEYPOINTS.get(name, name)
            scorer = LocalScorer((name,), self.reranking.max_keypoints,
                                 self.reranking.long_side,
                                 device=self.settings.get("device", "auto"), cache_dir=None,
                                 progress=False)
            if method not in extracted:
                scorer.keypoints(sample.iloc[-1:], None, "cost")  # warm-up
                start = time.perf_counter()
                extracted[method] = scorer.keypoints(sample.iloc[:-1], None, "cost")[name]
                self.photo_seconds[method] = ((time.perf_counter() - start)
                                              / max(len(sample) - 1, 1))
            self.photo_seconds[name] = self.photo_seconds[method]
            keypoints = extracted[method]
            score_pairs(scorer.matchers[name], keypoints, pairs[:1], progress=False)  # warm-up
            for with_ransac in (False, True) if name in ransac else (False,):
                start, rounds = time.perf_counter(), 0
                while rounds < 16 and (rounds == 0 or time.perf_counter() - start < 1.0):
                    score_pairs(scorer.matchers[name], keypoints, pairs, ransac=with_ransac,
                                progress=False)
                    rounds += 1  # fast matchers: enough pairs for a steady rate
                self.pair_seconds[pair_key(name, with_ransac)] = (
                    (time.perf_counter() - start) / max(len(pairs) * rounds, 1))

    def predict(self, candidate: Candidate, database: int, queries: int, new_photos: int,
                shortlist: int | None, new_regions: int = 0) -> float:
        """Seconds to fit ``candidate`` on ``database`` photos of one species and rank
        ``queries``, of which ``new_photos`` have no keypoints yet and ``new_regions`` no
        animal mask; the cosine's cost is that of every candidate, so 0."""
        matchers = candidate.matchers
        if not matchers:
            return 0.0
        compared = min(shortlist or database, database)
        calibration = min(_CALIBRATION_QUERIES, database)
        first = (calibration + queries) * compared  # the fit's calibration pairs, the queries'
        seconds = new_photos * max(self.photo_seconds[name] for name in matchers)
        if candidate.on_animal:
            seconds += new_regions * (self.region_seconds or 0.0)
        ransac = candidate.reranking(self.reranking).runs_ransac

        def per_pair(name: str) -> float:  # measured with RANSAC where the candidate runs it
            return self.pair_seconds.get(pair_key(name, ransac), self.pair_seconds[name])

        seconds += first * per_pair(matchers[0])
        cascade = candidate.settings.get("cascade")
        for name in matchers[1:]:
            seconds += (calibration + queries) * min(cascade or compared, compared) * \
                per_pair(name)
        return seconds * self.correction


class PipelineSelection(BaseEstimator):
    """Per species, the pipeline of ``candidates`` chosen on a development split of the
    database (module docstring), then fitted on the whole species.

    ``settings``: the :class:`~wildreid.pipeline.Identifier` parameters every candidate shares
    (model, device, cache, threshold...); ``reranking``: the local re-ranking every local
    candidate starts from (its shortlist, mirror, keypoints; default ``LocalReranking()``), each
    candidate's own settings over it. ``budget``: seconds for the whole run (``None``:
    :func:`default_budget` of the database and queries). ``development_queries``: held-out
    queries per species (a random subset beyond).

    After ``fit``: ``choice_`` and ``reason_`` by species, ``evaluations_`` (each candidate's
    :class:`Evaluation`), ``identifiers_`` (the chosen pipeline fitted on each species),
    ``router_`` (the fast identifier over the whole database: routes queries without species),
    ``decision_`` (every species' thresholds), ``budget_`` and ``seconds_``.
    """

    def __init__(self, candidates: Sequence[Candidate] = MENU, settings: dict | None = None,
                 reranking: LocalReranking | None = None, budget: float | None = None,
                 development_queries: int = DEVELOPMENT_QUERIES,
                 seed: int = 0, log: Callable[[str], None] | None = None):
        self.candidates = candidates
        self.settings = settings
        self.reranking = reranking
        self.budget = budget
        self.development_queries = development_queries
        self.seed = seed
        self.log = log

    def _identifier(self, candidate: Candidate):
        from wildreid.pipeline import Identifier

        return Identifier(**(self.settings or {}),
                          reranking=candidate.reranking(self._shared_reranking()))

    def _shared_reranking(self) -> LocalReranking:
        return LocalReranking() if self.reranking is None else self.reranking

    def _say(self, message: str) -> None:
        if self.log is not None:
            self.log(message)

    def fit(self, database: pd.DataFrame, queries: pd.DataFrame | None = None
            ) -> PipelineSelection:
        """Choose and fit per species. ``queries``: only their number per species is read, to
        size the budget and predict the real run's cost (their photos are never looked at)."""
        started = time.perf_counter()
        if not self.candidates or self.candidates[0].matchers:
            raise ValueError("the menu starts with the cosine alone (Candidate('cosine')): the "
                             "choice is never below the fast preset")
        settings = self.settings or {}
        closed_set = settings.get("threshold", "auto") is None
        species = species_keys(database.get("species"), len(database))
        query_species = (species_keys(queries.get("species"), len(queries))
                         if queries is not None else np.array([], dtype=object))
        photos = len(database) + len(query_species)
        self.budget_ = float(default_budget(photos) if self.budget is None else self.budget)
        self.router_ = self._identifier(self.candidates[0]).fit(database)
        self.choice_, self.reason_, self.evaluations_ = {}, {}, {}
        self.identifiers_, self.development_ = {}, {}
        names = list(dict.fromkeys(species))
        for position, name in enumerate(names):
            rows = np.flatnonzero(species == name)
            own = database.iloc[rows].reset_index(drop=True)
            asked = int((query_species == name).sum()) if len(query_species) else len(rows) // 3
            share = len(rows) + asked
            remaining = self.budget_ - (time.perf_counter() - started)
            # This species' share of what is left, by photos.
            left = sum(int((species == other).sum()) + int((query_species == other).sum())
                       for other in names[position:])
            allowance = remaining * share / max(left, 1)
            # Measured on each species' own photos: sizes and keypoint counts differ by species.
            cost = CostModel(settings, self._shared_reranking())
            self._fit_species(name, own, asked, allowance, cost, closed_set)
        known = {key: value for identifier in self.identifiers_.values()
                 for key, value in identifier.decision_.thresholds.items() if key is not None}
        self.decision_ = OpenSetDecision({**known, None: self.router_.decision_.thresholds[None]})
        self.seconds_ = time.perf_counter() - started
        return self

    def _fit_species(self, name, images: pd.DataFrame, queries: int, allowance: float,
                     cost: CostModel, closed_set: bool) -> None:
        started = time.perf_counter()
        label = "photos without species" if name is None else name
        split = development_split(images, self.development_queries, self.seed)
        if split is None:
            self._keep(name, images, self.candidates[0],
                       "too few identities to compare pipelines: the cosine alone")
            return
        reference, development = split.reference, split.queries
        truth, unknown = split.truth, split.unknown
        asked = self._shared_reranking().shortlist
        # Shortlists tried for a local candidate, largest first: the largest that fits the budget.
        shortlists = [asked, *(size for size in _SMALLER_SHORTLISTS
                               if asked is None or size < asked)]
        evaluations: list[Evaluation] = []
        sized: dict[str, Candidate] = {}  # each candidate at the shortlist it was evaluated with
        # Keypoint methods (and "regions": the animal's masks) already computed, and cached.
        extracted: set[str] = set()
        for candidate in self.candidates:
            if not split.dated and candidate.matchers and not candidate.on_animal:
                evaluations.append(Evaluation(candidate.name, _UNDATED))
                self._say(f"{label}: {candidate.name} not tried: {_UNDATED}")
                continue
            methods = {_KEYPOINTS.get(name, name) for name in candidate.matchers}
            if methods:
                cost.measure([m for c in self.candidates for m in c.matchers], images,
                             [m for c in self.candidates if c.matchers
                              and c.reranking(self._shared_reranking()).runs_ransac
                              for m in c.matchers])
            if candidate.on_animal:
                cost.measure_regions(images)
                methods |= {"regions"}
            fresh = len(images) if methods - extracted - {"regions"} else 0
            masked = len(images) if "regions" in methods - extracted else 0
            spent = time.perf_counter() - started
            for shortlist in shortlists if candidate.matchers else [asked]:
                predicted = cost.predict(candidate, len(reference), len(development), fresh,
                                         shortlist, masked)
                run = cost.predict(candidate, len(images), queries, queries, shortlist, queries)
                if spent + predicted + run <= allowance:
                    break
            if candidate.matchers and spent + predicted + run > allowance:
                evaluations.append(Evaluation(candidate.name, "over budget",
                                              predicted_seconds=predicted, run_seconds=run,
                                              shortlist=shortlist))
                self._say(f"{label}: {candidate.name} skipped, over budget (about "
                          f"{predicted + run:.0f} s predicted with a shortlist of {shortlist}, "
                          f"{allowance - spent:.0f} s left)")
                continue
            if candidate.matchers:
                candidate = Candidate(candidate.name, {**candidate.settings,
                                                       "shortlist": shortlist})
            sized[candidate.name] = candidate
            begun = time.perf_counter()
            identifier = self._identifier(candidate).fit(reference)
            answers = identifier.predict(development)["identity"].to_numpy()
            seconds = time.perf_counter() - begun
            correct, score = split.score(answers, closed_set)
            item = Evaluation(candidate.name, "evaluated", score=score,
                              seconds=seconds, predicted_seconds=predicted, run_seconds=run,
                              shortlist=shortlist if candidate.matchers else None,
                              correct=correct)
            if candidate.matchers and predicted > 0:  # later predictions learn from this one
                cost.correction *= seconds / predicted
                item.run_seconds = cost.predict(candidate, len(images), queries, queries,
                                                shortlist, queries)
            evaluations.append(item)
            extracted |= methods
            self._say(f"{label}: {candidate.name} scores {item.score:.3f} on "
                      f"{len(development)} development queries ({seconds:.0f} s)")
        chosen, reason = choose(evaluations, truth, unknown, closed_set, self.seed)
        self.evaluations_[name] = evaluations
        self.development_[name] = {"reference": len(reference), "queries": len(development),
                                   "unknown": int(unknown.sum())}
        self._say(f"{label}: chose {reason}")
        self._keep(name, images, sized[chosen], reason)

    def _keep(self, name, images: pd.DataFrame, candidate: Candidate, reason: str) -> None:
        self.evaluations_.setdefault(name, [])
        self.choice_[name], self.reason_[name] = candidate.name, reason
        self.identifiers_[name] = self._identifier(candidate).fit(images)

    def _check_fitted(self) -> None:
        if not hasattr(self, "identifiers_"):
            raise RuntimeError("call fit(database) before predicting")

    def predict_candidates(self, queries: pd.DataFrame, k: int = 5) -> pd.DataFrame:
        """Long table ``image_id, species, rank, identity, score...``: each query ranked by its
        species' chosen pipeline (queries without species routed first)."""
        return self.candidates_and_descriptors(queries, k)[0]

    def candidates_and_descriptors(self, queries: pd.DataFrame, k: int = 5
                                   ) -> tuple[pd.DataFrame, np.ndarray]:
        """:meth:`predict_candidates`' table and the queries' global descriptors (as
        :meth:`~wildreid.pipeline.Identifier.candidates_and_descriptors`)."""
        from wildreid.pipeline import _image_ids

        self._check_fitted()
        routed = self.router_._route(queries, "queries")
        species = species_keys(routed.get("species"), len(routed))
        position = {image: row for row, image in enumerate(_image_ids(routed))}
        tables, features = [], None
        for name in dict.fromkeys(species):
            rows = np.flatnonzero(species == name)
            # A species the database never had: the router's (fast) answer.
            identifier = self.identifiers_.get(name, self.router_)
            table, found = identifier.candidates_and_descriptors(routed.iloc[rows], k)
            tables.append(table)
            if features is None:
                features = np.zeros((len(routed), found.shape[1]), np.float32)
            width = min(found.shape[1], features.shape[1])
            features[rows, :width] = found[:, :width]
        table = pd.concat(tables, ignore_index=True)
        # How each query's species was known: the router's word, not the species' identifier's.
        where = table["image_id"].map(position).to_numpy()
        for column in ("species_source", "species_confidence"):
            table[column] = routed[column].to_numpy()[where]
        table = table.iloc[np.lexsort((table["rank"].to_numpy(), where))]
        return table.reset_index(drop=True), features

    def decide(self, candidates: pd.DataFrame) -> pd.DataFrame:
        """Submission rows ``image_id, identity, score, species`` from ranked candidates."""
        from wildreid.pipeline import decided

        return decided(candidates, self.decision_)

    def predict(self, queries: pd.DataFrame) -> pd.DataFrame:
        """For each query: a database identity or ``new_individual`` (with ``cluster_new`` in
        ``settings``: a proposed ``new_individual_<n>``), with its score."""
        candidates, features = self.candidates_and_descriptors(queries, k=1)
        answers = self.decide(candidates)
        if (self.settings or {}).get("cluster_new"):
            return self.group_new(queries, answers, features)
        return answers

    def group_new(self, queries: pd.DataFrame, answers: pd.DataFrame,
                  features: np.ndarray | None = None) -> pd.DataFrame:
        """``answers`` with the ``new_individual`` queries of each species grouped by that
        species' pipeline (its similarity and its fitted cut), numbered over all species."""
        from wildreid.pipeline import propose_new_individuals

        def groups_of(images: pd.DataFrame, described: np.ndarray | None, key: str | None):
            identifier = self.identifiers_.get(key, self.router_)
            if getattr(identifier, "grouping_", None) is None:
                raise RuntimeError("fit with cluster_new=True in settings before grouping new "
                                   "individuals")
            return identifier.grouping_.predict(identifier.similarity(images, described), key)

        return propose_new_individuals(queries, answers, features, groups_of)

    @property
    def grouping_(self):
        """Every species' fitted cut (from its own pipeline), as one grouping."""
        from wildreid.grouping import NewIndividualGrouping

        fitted = [identifier.grouping_ for identifier in self.identifiers_.values()
                  if getattr(identifier, "grouping_", None) is not None]
        if not fitted:
            return None
        cuts = {None: self.router_.grouping_.cuts[None]} if self.router_.grouping_ else {}
        quality = {}
        for name, identifier in self.identifiers_.items():
            if getattr(identifier, "grouping_", None) is not None:
                cuts[name] = identifier.grouping_.cut_for(name)
                quality[name] = identifier.grouping_.quality.get(name)
        return NewIndividualGrouping(cuts, quality)

    def summary(self) -> dict:
        """What was chosen per species and why, with every candidate's evidence (for
        ``run.json``)."""
        return {"budget_seconds": round(self.budget_, 1), "seconds": round(self.seconds_, 1),
                "species": {str(name): {
                    "chosen": self.choice_[name], "why": self.reason_[name],
                    "development": self.development_.get(name),
                    "candidates": [item.row() for item in self.evaluations_[name]]}
                    for name in self.choice_}}
