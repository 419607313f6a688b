"""Extract the Cat Faces Identification photos into a `wildreid split` folder.

Source: https://github.com/gpriamo/Cat-Faces-Identification (Biometric Systems
project, Sapienza, winter 2020), commit 5bf662d0140adfd7fc359f8e97961038501e4fa5.
Licence: MIT (LICENSE file of the repository; it covers the committed photos too,
no separate statement for them).

Photos: ``images/dataset/cropped/s<N>/*.jpg|jpeg`` are face crops of 23 pet cats, one
folder per cat; ``dataset_info/subject-to-name.txt`` maps ``s<N>`` to the cat's
name. Labels are individual cats (not breeds). The ``*_cropped_aligned*`` files are
eye-aligned copies of the same crops and are skipped, leaving 371 photos.

Writes ``<output>/domestic_cat/<name>/<file>`` (JPEG).

Run (after the ``fetch`` tool brought the repository into the mirror)::

    python benchmarks/datasets/fetch_catfaces.py [MIRROR_GIT_DIR] [OUTPUT_DIR]
    wildreid split ../data/catfaces --output ../data/catfaces-open --kind open
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

COMMIT = "5bf662d0140adfd7fc359f8e97961038501e4fa5"
MIRROR = "/work/.mirror/gpriamo+Cat-Faces-Identification/repo"
OUTPUT = Path(__file__).resolve().parents[2].parent / "data" / "catfaces"
SPECIES = "domestic_cat"


def git(git_dir: str, *args: str) -> bytes:
    return subprocess.run(["git", f"--git-dir={git_dir}", *args], check=True, capture_output=True).stdout


def main(git_dir: str = MIRROR, output: Path = OUTPUT) -> None:
    names = {}
    for line in git(git_dir, "show", f"{COMMIT}:dataset_info/subject-to-name.txt").decode().splitlines():
        subject, name = line.split()
        names[subject] = name.lower()
    listing = git(git_dir, "ls-tree", "-r", "--name-only", COMMIT, "images/dataset/cropped")
    count = 0
    for path in listing.decode().splitlines():
        if not path.lower().endswith((".jpg", ".jpeg")) or "aligned" in path:
            continue
        subject, filename = path.split("/")[-2:]
        target = output / SPECIES / names[subject] / filename
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(git(git_dir, "show", f"{COMMIT}:{path}"))
        count += 1
    print(f"{count} photos of {len(names)} cats in {output}")


if __name__ == "__main__":
    main(*sys.argv[1:2], *[Path(p) for p in sys.argv[2:3]])
