"""No photo can break a run: photos that give a detector nothing (black, uniform, one pixel, tiny,
one or two blobs) and odd ones (grayscale, huge) among real photos, as queries and in the
database, through every offline local method and both presets. A photo without keypoints is
data: it is scored by what remains (the global cosine), and the run says how many there were."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw
from typer.testing import CliRunner

from wildreid.cli import app
from wildreid.local import Keypoints, keep_strongest
from wildreid.matching import create_matcher

from .conftest import settings_file


def _blobs(count: int, size=(200, 160)) -> Image.Image:
    """A black photo with ``count`` white squares: one or two keypoints at most."""
    image = Image.new("RGB", size)
    draw = ImageDraw.Draw(image)
    for number in range(count):
        x = 40 + 90 * number
        draw.rectangle((x, 60, x + 12, 72), fill=(255, 255, 255))
    return image


def degenerate_photos(real: Path) -> dict[str, Image.Image]:
    """Photos that give nothing or next to nothing, and odd but valid ones, by name (``real``:
    one real photo they are derived from)."""
    photo = Image.open(real).convert("RGB")
    return {
        "black": Image.new("RGB", (300, 200)),
        "one-pixel": Image.new("RGB", (1, 1), (90, 60, 30)),
        "grey": Image.new("RGB", (64, 64), (128, 128, 128)),
        "white-tiny": Image.new("RGB", (7, 5), (255, 255, 255)),
        "tiny": photo.resize((20, 15)),
        "grayscale": photo.convert("L"),
        "huge": photo.resize((3000, 2000)),
        "one-blob": _blobs(1),
        "two-blobs": _blobs(2),
    }


def write_degenerate(real_subset: Path, folder: Path, names: list[str] | None = None,
                     in_database: bool = True, small: bool = False) -> Path:
    """``real_subset`` with the degenerate photos added as queries (per species) and, with
    ``in_database``, as two database identities of the lion (blank photos; blobs). ``small``:
    of the real photos, per species two identities' and one query (for the slow matchers)."""
    metadata = pd.read_csv(real_subset / "metadata.csv", dtype=str, keep_default_na=False)
    if small:
        database = metadata[metadata["split"] == "database"]
        kept = database.groupby("species")["identity"].unique().map(lambda names: names[:2])
        metadata = pd.concat([
            database[database["identity"].isin(np.concatenate(kept.to_list()))],
            metadata[metadata["split"] == "query"].groupby("species").head(1)])
    photos = degenerate_photos(Path(metadata["path"].iloc[0]))
    names = list(photos) if names is None else names
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in names:
        path = folder / f"{name}.png"
        photos[name].save(path)
        for species in ("nyala", "lion"):
            rows.append({"image_id": f"query-{species}-{name}", "path": str(path),
                         "species": species, "split": "query"})
    if in_database:
        for name, identity in (("black", "blank"), ("grey", "blank"), ("one-blob", "blobs"),
                               ("two-blobs", "blobs"), ("one-pixel", "blank")):
            path = folder / f"{name}.png"
            photos[name].save(path)
            rows.append({"image_id": f"database-{name}", "path": str(path), "species": "lion",
                         "identity": identity, "split": "database"})
    pd.concat([metadata, pd.DataFrame(rows)]).fillna("").to_csv(folder / "metadata.csv",
                                                                index=False)
    return folder


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """One cache for the module's runs: rows are keyed by content, so the real photos' features,
    regions and keypoints are computed once (and a blank photo's are read back as blank)."""
    return tmp_path_factory.mktemp("cache")


def _identify(folder: Path, cache: Path, *options: str) -> tuple[pd.DataFrame, dict, str]:
    output = folder / "run" / "submission.csv"
    result = CliRunner().invoke(app, ["identify", str(folder), "--output", str(output),
                                      "--device", "cpu", "--cache-dir", str(cache), *options])
    assert result.exit_code == 0, result.output
    metadata = pd.read_csv(folder / "metadata.csv", dtype=str, keep_default_na=False)
    submission = pd.read_csv(output, dtype=str, keep_default_na=False)
    queries = metadata.loc[metadata["split"] == "query", "image_id"]
    assert sorted(submission["image_id"]) == sorted(queries)  # every query answered
    assert (submission["identity"] != "").all()
    return submission, json.loads((output.parent / "run.json").read_text()), result.output


@pytest.mark.hostile
@pytest.mark.parametrize("local", ["sift", "orb", "aliked-nn", "aliked", "disk"])
@pytest.mark.slow
def test_the_accurate_preset_finishes_on_degenerate_photos(real_subset, tmp_path, local, cache):
    """Every offline local method, degenerate photos among the queries and the database: a
    complete submission, and the photos without keypoints counted in run.json (and said in the
    run's output). OpenCV's detectors find nothing on a blank photo; the learned ones (ALIKED,
    DISK) keep their strongest responses whatever they are, so they always give keypoints.
    Keypoints on the whole photo of 256 px at most: the segmenter and full-size detection are
    other tests' (this keeps the suite short)."""
    folder = write_degenerate(real_subset, tmp_path / "data", small=True)
    _, info, output = _identify(folder, cache, "--preset", "accurate", "--local", local,
                                "--shortlist", "3", *settings_file(
                                    tmp_path, keypoints_on="image", long_side=256,
                                    max_keypoints=256))
    empty = info["photos_without_keypoints"]
    if local in ("sift", "orb"):
        # Black, one pixel, grey and white as queries of both species; in the database, those
        # of the three blank photos its calibration matched.
        assert empty["query"] >= 8 and empty["database"] >= 1, empty
        assert "photos without keypoints" in output
    else:
        assert empty == {"database": 0, "query": 0}


@pytest.mark.hostile
@pytest.mark.slow
def test_the_fast_preset_finishes_on_degenerate_photos(real_subset, tmp_path, cache):
    folder = write_degenerate(real_subset, tmp_path / "data")
    _identify(folder, cache)


@pytest.mark.hostile
@pytest.mark.parametrize("keypoints_on", ["image", "animal"])
@pytest.mark.slow
def test_a_lone_black_query_against_a_real_database(real_subset, tmp_path, keypoints_on):
    """The case found from outside: nine database photos and one black 300x200 PNG as the only
    query (``--keypoints-on image`` failed differently from ``animal``); a cache of its own, so
    the detector meets the black photo here."""
    metadata = pd.read_csv(real_subset / "metadata.csv", dtype=str, keep_default_na=False)
    lion = metadata[(metadata["species"] == "lion") & (metadata["split"] == "database")].head(9)
    folder = tmp_path / "data"
    folder.mkdir()
    Image.new("RGB", (300, 200)).save(folder / "black.png")
    query = pd.DataFrame([{"image_id": "black", "path": str(folder / "black.png"),
                           "species": "lion", "split": "query"}])
    pd.concat([lion, query]).fillna("").to_csv(folder / "metadata.csv", index=False)
    _, info, _ = _identify(folder, tmp_path / "cache", "--preset", "accurate", "--local", "sift",
                           *settings_file(tmp_path, keypoints_on=keypoints_on))
    assert info["photos_without_keypoints"]["query"] == 1


@pytest.mark.hostile
@settings(max_examples=3, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(chosen=st.sets(st.sampled_from(["black", "one-pixel", "grey", "white-tiny", "tiny",
                                       "grayscale", "one-blob", "two-blobs"]), min_size=1),
       in_database=st.booleans(), preset=st.sampled_from(["fast", "accurate"]))
def test_any_mix_of_degenerate_photos_gives_a_complete_submission(real_subset, tmp_path_factory,
                                                                  cache, chosen, in_database,
                                                                  preset):
    """Property: whatever degenerate photos are mixed in (as queries, and in the database or
    not), with either preset, every query gets an answer."""
    folder = write_degenerate(real_subset, tmp_path_factory.mktemp("mix"), sorted(chosen),
                              in_database)
    options = ["--preset", "accurate", "--local", "sift", "--shortlist", "4"] \
        if preset == "accurate" else []
    _identify(folder, cache, *options)


@pytest.mark.hostile
@pytest.mark.parametrize("shape", [(0,), (0, 2)])
def test_no_keypoints_from_a_detector_is_an_empty_set(shape):
    """OpenCV gives an empty array of shape (0,) (not None) where it finds nothing."""
    empty = np.zeros(shape, np.float32)
    found = keep_strongest(empty, np.zeros(0, np.float32), np.zeros((0, 128), np.float32),
                           (300, 200), None, 512)
    assert len(found) == 0 and found.xy.shape == (0, 2) and found.descriptors.shape == (0, 128)
    assert found.in_photo((300, 200)).shape == (0, 2)


@pytest.mark.hostile
@pytest.mark.parametrize("matcher", ["sift", "aliked-nn", "aliked"])
@pytest.mark.parametrize("counts", [(0, 0), (0, 30), (1, 30), (2, 2), (30, 0)])
def test_matchers_take_empty_and_near_empty_keypoint_sets_in_a_batch(matcher, counts):
    """0, 1 or 2 keypoints on one side, batched with full pairs: no match for the empty pair,
    and the full pairs matched as when alone."""
    rng = np.random.default_rng(0)
    dim = 128

    def keypoints(n: int) -> Keypoints:
        descriptors = rng.standard_normal((n, dim)).astype(np.float32)
        descriptors /= np.maximum(np.linalg.norm(descriptors, axis=1, keepdims=True), 1e-6)
        return Keypoints(rng.random((n, 2), np.float32) * 199, rng.random(n, np.float32),
                         descriptors, (200, 200))

    full = keypoints(40)
    first, second = keypoints(counts[0]), keypoints(counts[1])
    matching = create_matcher(matcher, device="cpu")
    batched = matching.match_batch([full, first], [full, second])
    alone = matching.match_batch([full], [full])[0]
    assert len(batched) == 2
    if 0 in counts:
        assert len(batched[1]) == 0
    assert np.array_equal(np.asarray(batched[0])[:, :2], np.asarray(alone)[:, :2])
