"""Decoding real and awkward image files."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from wildreid.images import ImageError, check_image, load_image

from .conftest import BENCH

#: Every test here reads real photos of the shared benchmark.
pytestmark = pytest.mark.bench


def _photo() -> Image.Image:
    return Image.open(BENCH / "images" / "nyala" / sorted(
        p.name for p in (BENCH / "images" / "nyala").iterdir())[0]).convert("RGB")


def test_lion_png_names_hold_jpeg_bytes_and_decode_by_content():
    path = next((BENCH / "images" / "lion").glob("*.png"))
    assert path.read_bytes()[:3] == b"\xff\xd8\xff"  # JPEG magic behind a .png name
    image = load_image(path)
    assert image.mode == "RGB" and min(image.size) > 32


def test_wrong_extension(tmp_path):
    path = tmp_path / "really-a-jpeg.png"
    _photo().save(path, format="JPEG")
    assert load_image(path).size == _photo().size


def test_zero_bytes_is_a_clear_error(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    with pytest.raises(ImageError, match=r"empty\.jpg: the file is empty"):
        load_image(path)


def test_truncated_jpeg_is_a_clear_error(tmp_path):
    path = tmp_path / "cut.jpg"
    _photo().save(path, format="JPEG")
    path.write_bytes(path.read_bytes()[:2000])
    with pytest.raises(ImageError, match=r"cut\.jpg: corrupt or truncated"):
        load_image(path)


def test_not_an_image(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("field notes, not a photo")
    assert "not an image format" in check_image(path)


def test_cmyk_becomes_rgb(tmp_path):
    path = tmp_path / "cmyk.jpg"
    _photo().convert("CMYK").save(path, format="JPEG")
    image = load_image(path)
    assert image.mode == "RGB"
    difference = np.abs(np.asarray(image, float) - np.asarray(_photo(), float)).mean()
    assert difference < 20  # same picture, up to JPEG and colour-space round trips


def test_sixteen_bit_png_is_rescaled_not_clipped(tmp_path):
    ramp = np.tile(np.linspace(0, 65535, 256).astype(np.uint16), (8, 1))
    path = tmp_path / "depth16.png"
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode.startswith("I;16")
    pixels = np.asarray(load_image(path))
    assert pixels.shape == (8, 256, 3)
    assert pixels[0, 0, 0] == 0 and pixels[0, -1, 0] == 255
    assert 120 <= pixels[0, 128, 0] <= 135  # mid-grey, not clipped to white


def test_alpha_is_flattened(tmp_path):
    path = tmp_path / "alpha.png"
    rgba = _photo().convert("RGBA")
    rgba.putalpha(128)
    rgba.save(path)
    assert load_image(path).mode == "RGB"


def test_exif_orientation_is_applied(tmp_path):
    photo = _photo()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    path = tmp_path / "rotated.jpg"
    photo.save(path, format="JPEG", exif=exif)
    assert load_image(path).size == (photo.height, photo.width)


def test_decompression_bomb_is_refused(tmp_path):
    path = tmp_path / "bomb.png"
    Image.new("1", (12000, 12000)).save(path)  # a few kB on disk, 144 Mpx decoded
    assert path.stat().st_size < 100_000
    with pytest.raises(ImageError, match="decompression bomb"):
        load_image(path, max_pixels=50_000_000)


def test_missing_file(tmp_path):
    with pytest.raises(ImageError, match="file not found"):
        load_image(tmp_path / "nowhere.jpg")
