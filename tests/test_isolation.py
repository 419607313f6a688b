"""Animal isolation with U²-Net-p on real benchmark photos."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from wildreid.cli import app
from wildreid.data import DatasetError, load_dataset
from wildreid.images import load_image
from wildreid.isolation import (
    FILL,
    Isolator,
    Region,
    Segmenter,
    network_input,
    u2netp_weights,
)
from wildreid.pipeline import Identifier
from wildreid.weights import U2NETP, sha256_of

from .conftest import BENCH

#: Every test here reads real photos of the shared benchmark.
pytestmark = pytest.mark.bench


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    path = u2netp_weights(tmp_path_factory.mktemp("weights-cache"))
    assert sha256_of(path) == U2NETP.sha256
    return path


@pytest.fixture(scope="module")
def segmenter(weights):
    return Segmenter(weights)


def test_nyala_mask_and_box_hold_the_animal(segmenter):
    image = load_image(BENCH / "images" / "nyala" / "e391915f7abd.jpg")
    region = segmenter.regions([image])[0]
    assert region.source == "segmenter"
    x, y, w, h = region.box_at(image.size)
    mask = region.mask_at(image.size)
    assert mask.shape == (image.height, image.width)
    inside_box = mask[y:y + h, x:x + w] > 0
    assert inside_box.sum() == (mask > 0).sum()  # the box bounds the whole mask
    assert inside_box.mean() > 0.3  # and the animal (without margin) fills much of it
    assert 0.1 < region.area < 0.8  # an animal in a scene, not the whole frame


def test_guard_falls_back_on_a_tight_crop(segmenter):
    image = load_image(BENCH / "images" / "lion" / "ab5078dea883.png")  # whiskers close-up
    region = segmenter.regions([image])[0]
    assert region.source == "guard"
    assert region.box_at(image.size) == (0, 0, image.width, image.height)
    assert (region.mask_at(image.size) == 255).all() and region.is_whole


@pytest.mark.slow
def test_sheet_command(real_subset, weights, tmp_path):
    output = tmp_path / "sheet.png"
    result = CliRunner().invoke(app, ["sheet", str(real_subset), "--output", str(output), "--n", "9",
                                      "--weights", str(weights),
                                      "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 0, result.output
    sheet = Image.open(output)
    assert sheet.size == (8 * 192, 2 * (192 + 14))
    assert np.asarray(sheet).std() > 10  # pictures, not a blank canvas


@pytest.mark.slow
def test_torch_backend_matches_onnxruntime(segmenter, weights):
    images = [load_image(BENCH / "images" / "nyala" / "e391915f7abd.jpg"),
              load_image(BENCH / "images" / "lion" / "ab5078dea883.png")]
    converted = Segmenter(weights, backend="torch", device="cpu")
    batch = np.stack([network_input(image) for image in images])
    assert np.abs(converted.probability(batch) - segmenter.probability(batch)).max() < 1e-3
    assert [r.source for r in converted.regions(images)] == ["segmenter", "guard"]


def test_region_crop_mask_keypoints_and_cache_row(segmenter):
    image = load_image(BENCH / "images" / "nyala" / "e391915f7abd.jpg")
    region = segmenter.regions([image])[0]
    restored = Region.from_row(region.to_row())
    assert (restored.grid == region.grid).all() and restored.source == region.source
    assert np.allclose(restored.box, region.box) and restored.fingerprint == region.fingerprint
    x, y, w, h = region.box_at(image.size)
    assert region.apply(image, "crop").size == (w, h)
    masked = np.asarray(region.apply(image, "mask"))
    outside = region.mask_at(image.size)[y:y + h, x:x + w] == 0
    assert outside.any() and (masked[outside] == FILL).all()
    assert region.apply(image, "none") is image
    points = np.array([[x + w / 2, y + h / 2], [1, 1], [image.width + 5, 0]])
    assert region.contains(points, image.size).tolist() == [True, False, False]


def test_user_given_bbox_and_mask_override_the_segmenter(tmp_path, weights):
    nyala = BENCH / "images" / "nyala" / "e391915f7abd.jpg"
    width, height = load_image(nyala).size
    mask = np.zeros((height, width), np.uint8)
    mask[10:60, 20:120] = 255
    Image.fromarray(mask).save(tmp_path / "m.png")
    frame = pd.DataFrame({"filepath": [str(nyala)] * 3, "bbox": ["20, 10, 100, 50", None, None],
                          "maskpath": [None, str(tmp_path / "m.png"), None]})
    regions = Isolator(Segmenter(weights), cache_dir=tmp_path / "cache", progress=False)(frame)
    assert [r.source for r in regions] == ["metadata", "metadata", "segmenter"]
    for region in regions[:2]:
        x, y, w, h = region.box_at((width, height))
        assert abs(x - 20) <= 2 and abs(y - 10) <= 2 and abs(w - 100) <= 3 and abs(h - 50) <= 3
    again = Isolator(Segmenter(weights), cache_dir=tmp_path / "cache", progress=False)(frame)
    assert (again[2].grid == regions[2].grid).all()  # read back from the cache


def test_bad_bbox_is_reported_by_dataset_validation(real_subset, tmp_path):
    metadata = pd.read_csv(real_subset / "metadata.csv")
    metadata["bbox"] = ""
    metadata.loc[0, "bbox"] = "1, 2, 3"
    metadata.loc[1, "bbox"] = "0, 0, -4, 5"
    metadata.to_csv(tmp_path / "metadata.csv", index=False)
    with pytest.raises(DatasetError, match="2 bbox value"):
        load_dataset(tmp_path)


@pytest.mark.slow
def test_isolated_features_are_cached_apart(real_subset, weights, tmp_path):
    images = load_dataset(real_subset).metadata.head(6)
    whole = Identifier(cache_dir=tmp_path, progress=False, device="cpu").describe(images)
    crop = Identifier(isolation="crop", segmenter_weights=weights, cache_dir=tmp_path,
                      progress=False, device="cpu")
    cropped = crop.describe(images)
    regions = crop.isolator(images)
    differs = np.abs(cropped - whole).max(axis=1) > 1e-4
    assert differs.tolist() == [not r.is_whole for r in regions]
    per_species = Identifier(isolation={"nyala": "crop"}, segmenter_weights=weights,
                             cache_dir=tmp_path, progress=False, device="cpu")
    mixed = per_species.describe(images)
    is_nyala = (images["species"] == "nyala").to_numpy()
    assert np.allclose(mixed[is_nyala], cropped[is_nyala], atol=1e-6)
    assert np.allclose(mixed[~is_nyala], whole[~is_nyala], atol=1e-6)
