"""A synthetic open-set dataset in the AnimalCLEF layout, drawn procedurally (no download).

Each individual is a body with its own coat pattern: spots for ``spotted``, stripes for
``striped``. Each photograph places it in a cluttered scene with its own pose, scale, lighting and
background. Some individuals appear only among the queries (the unknowns).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFilter

BODY = (200, 110)  # width, height of the coat texture in pixels
SPECIES = ("spotted", "striped")


@dataclass
class Individual:
    name: str
    species: str
    coat: Image.Image  # RGBA, transparent outside the body


def _coat(species: str, rng: np.random.Generator) -> Image.Image:
    width, height = BODY
    base = tuple(int(v) for v in rng.integers(120, 230, 3))
    ink = tuple(int(v * 0.25) for v in base)
    coat = Image.new("RGB", BODY, base)
    draw = ImageDraw.Draw(coat)
    if species == "spotted":
        for _ in range(int(rng.integers(18, 30))):
            x, y = rng.uniform(0, width), rng.uniform(0, height)
            r = rng.uniform(4, 14)
            draw.ellipse([x - r, y - r * rng.uniform(0.6, 1.0), x + r, y + r], fill=ink)
    else:
        for _ in range(int(rng.integers(7, 13))):
            x0, bend, thick = rng.uniform(0, width), rng.uniform(-25, 25), rng.uniform(3, 11)
            points = [(x0 + bend * math.sin(math.pi * t / 10), height * t / 10) for t in range(11)]
            draw.line(points, fill=ink, width=int(thick))
    mask = Image.new("L", BODY, 0)
    ImageDraw.Draw(mask).ellipse([0, 0, width - 1, height - 1], fill=255)
    coat.putalpha(mask)
    return coat


def _scene(size: int, rng: np.random.Generator) -> Image.Image:
    low = rng.integers(40, 200, (4, 4, 3)).astype(np.uint8)
    scene = Image.fromarray(low, "RGB").resize((size, size), Image.BICUBIC)
    draw = ImageDraw.Draw(scene)
    for _ in range(int(rng.integers(8, 20))):  # clutter: leaves, rocks
        x, y, r = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(5, 30)
        colour = tuple(int(v) for v in rng.integers(20, 160, 3))
        draw.ellipse([x - r, y - r, x + r, y + r * 0.6], fill=colour)
    return scene.filter(ImageFilter.GaussianBlur(1.5))


def photograph(individual: Individual, rng: np.random.Generator, size: int = 256) -> Image.Image:
    """One photo of ``individual``: random pose, scale, position, lighting and background."""
    scene = _scene(size, rng)
    scale = rng.uniform(0.75, 1.1) * size / 256
    body = individual.coat.resize((int(BODY[0] * scale), int(BODY[1] * scale)), Image.BICUBIC)
    body = body.rotate(rng.uniform(-20, 20), resample=Image.BICUBIC, expand=True)
    x = int(rng.uniform(0, max(1, size - body.width)))
    y = int(rng.uniform(0, max(1, size - body.height)))
    scene.paste(body, (x, y), body)
    pixels = np.asarray(scene, dtype=np.float32)
    gain, offset = rng.uniform(0.7, 1.3), rng.uniform(-25, 25)
    pixels = pixels * gain + offset + rng.normal(0, 6, pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def make_demo_dataset(out: str | Path, individuals: int = 10, unknown: int = 4,
                      database_images: int = 4, query_images: int = 2, size: int = 256,
                      species: tuple[str, ...] = SPECIES, seed: int = 0) -> Path:
    """Write ``out/metadata.csv``, ``out/solution.csv`` and ``out/images/<species>/*.jpg``.

    Per species: ``individuals`` known ones with ``database_images`` database photos and
    ``query_images`` query photos each, plus ``unknown`` individuals seen only as queries.
    """
    out = Path(out)
    rng = np.random.default_rng(seed)
    rows, solution = [], []
    for kind in species:
        folder = out / "images" / kind
        folder.mkdir(parents=True, exist_ok=True)
        for number in range(individuals + unknown):
            animal = Individual(f"{kind}-{number:03d}", kind, _coat(kind, rng))
            is_unknown = number >= individuals
            splits = ["query"] * query_images if is_unknown else (
                ["database"] * database_images + ["query"] * query_images)
            for shot, split in enumerate(splits):
                image_id = f"{animal.name}-{shot:02d}"
                path = folder / f"{image_id}.jpg"
                photograph(animal, rng, size).save(path, quality=90)
                rows.append({"image_id": image_id,
                             "identity": animal.name if split == "database" else "",
                             "path": str(path.relative_to(out)), "date": "",
                             "orientation": "left", "species": kind, "split": split,
                             "dataset": "wildreid-demo"})
                if split == "query":
                    solution.append({"image_id": image_id, "identity": animal.name})
    pd.DataFrame(rows).to_csv(out / "metadata.csv", index=False)
    pd.DataFrame(solution).to_csv(out / "solution.csv", index=False)
    return out
