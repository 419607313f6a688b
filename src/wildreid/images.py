"""Image decoding: by content, EXIF-upright, always 8-bit RGB, bounded in size.

Field photos arrive in every shape: JPEG bytes behind a ``.png`` name, CMYK scans, 16-bit PNGs from
camera traps, phones that store rotation only in EXIF. Every stage downstream sees plain RGB.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

#: Images above this many pixels are refused: 150 Mpx is beyond any camera a field team carries,
#: and a small file that claims more is a decompression bomb.
MAX_PIXELS = 150_000_000

_SIXTEEN_BIT_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N"}


class ImageError(ValueError):
    """An image file that cannot be used; the message names the file and the problem."""


def _open(path: str | Path, max_pixels: int, formats: tuple[str, ...] | None = None
          ) -> Image.Image:
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise ImageError(f"{path}: the file is empty (0 bytes)")
        with warnings.catch_warnings():
            # Our own limit below applies; Pillow's stricter warning would refuse real photos.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            # PIL sniffs the format from the bytes, so a JPEG named .png still opens.
            image = Image.open(path, formats=formats)
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(f"{path}: file not found") from None
    except UnidentifiedImageError:
        accepted = f" (accepted: {', '.join(formats)})" if formats else ""
        raise ImageError(f"{path}: not an image format Pillow can read{accepted}") from None
    except Image.DecompressionBombError:
        raise ImageError(f"{path}: refused, too many pixels (possible decompression bomb)") from None
    except OSError as error:
        raise ImageError(f"{path}: cannot be read ({error})") from None
    except Exception as error:  # a malformed header trips Pillow's plug-ins in many ways
        raise ImageError(f"{path}: cannot be read ({type(error).__name__}: {error})") from None
    width, height = image.size
    if width * height > max_pixels:
        raise ImageError(
            f"{path}: refused, {width}x{height} pixels is over the limit of {max_pixels:,} "
            "(possible decompression bomb); resize it first"
        )
    return image


def check_image(path: str | Path, max_pixels: int = MAX_PIXELS) -> str | None:
    """Cheap header check; returns a problem description or None when the file looks usable."""
    try:
        _open(path, max_pixels).close()
    except ImageError as error:
        return str(error)
    return None


def image_format(path: str | Path, max_pixels: int = MAX_PIXELS,
                 formats: tuple[str, ...] | None = None) -> str:
    """The format Pillow detects in the file's bytes (``JPEG``, ``PNG``...), whatever its name;
    raises :class:`ImageError` when it is not a usable image (or not one of ``formats``)."""
    with _open(path, max_pixels, formats) as image:
        return image.format


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in _SIXTEEN_BIT_MODES:
        # Pillow's convert() clips 16-bit values at 255; rescale the real range instead.
        array = np.asarray(image, dtype=np.float32)  # float32: exact for 16-bit, half the memory
        top = 65535.0 if array.max(initial=0) > 255 else 255.0
        gray = np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        image = image.convert("RGBA")
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image, mask=image.getchannel("A"))
        return background
    if image.mode != "RGB":
        return image.convert("RGB")
    return image


def load_image(path: str | Path, max_pixels: int = MAX_PIXELS,
               formats: tuple[str, ...] | None = None) -> Image.Image:
    """Decode ``path`` into an upright 8-bit RGB image or raise :class:`ImageError`."""
    image = _open(path, max_pixels, formats)
    try:
        image.load()
        image = ImageOps.exif_transpose(image)
        return _to_rgb(image)
    except ImageError:
        raise
    except Exception as error:  # whatever a damaged file makes the decoder raise
        raise ImageError(f"{path}: corrupt or truncated image data ({error})") from None
