"""Animal isolation with U²-Net-p on real benchmark photos."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from wildreid.cli import app
from wildreid.images import load_image
from wildreid.isolation import U2NETP_SHA256, Segmenter, _sha256, u2netp_weights

from .conftest import BENCH


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    path = u2netp_weights(tmp_path_factory.mktemp("weights-cache"))
    assert _sha256(path) == U2NETP_SHA256
    return path


@pytest.fixture(scope="module")
def segmenter(weights):
    return Segmenter(weights)


def test_nyala_mask_and_box_hold_the_animal(segmenter):
    image = load_image(BENCH / "images" / "nyala" / "e391915f7abd.jpg")
    region = segmenter.regions([image])[0]
    assert region.source == "segmenter"
    x, y, w, h = region.box
    inside_box = region.mask[y:y + h, x:x + w] > 0
    assert inside_box.sum() == (region.mask > 0).sum()  # the box bounds the whole mask
    assert inside_box.mean() > 0.4  # and the animal fills much of it
    assert 0.1 < region.area < 0.8  # an animal in a scene, not the whole frame


def test_guard_falls_back_on_a_tight_crop(segmenter):
    image = load_image(BENCH / "images" / "lion" / "ab5078dea883.png")  # whiskers close-up
    region = segmenter.regions([image])[0]
    assert region.source == "guard"
    assert region.box == (0, 0, image.width, image.height) and (region.mask == 255).all()


def test_sheet_command(real_subset, weights, tmp_path):
    output = tmp_path / "sheet.png"
    result = CliRunner().invoke(app, ["sheet", str(real_subset), "--output", str(output), "--n", "9",
                                      "--weights", str(weights)])
    assert result.exit_code == 0, result.output
    sheet = Image.open(output)
    assert sheet.size == (8 * 192, 2 * (192 + 14))
    assert np.asarray(sheet).std() > 10  # pictures, not a blank canvas
