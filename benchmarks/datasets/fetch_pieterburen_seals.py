"""Extract the Sealcentre Pieterburen sample seal photos into a `wildreid split` folder.

Source: https://github.com/ciziks/seal-photo-identification (student project for the
Sealcentre Pieterburen, the Netherlands), commit da10b75af9d06b7afd82a7f420f5362884649eed.
Licence: none stated (no LICENSE file; the README says nothing about the photos).

Photos: ``MVP/sample_seals/<name>/<Left|Right>/*`` are field photos of wild harbour
seals (Phoca vitulina, species judged from the photos; the repository does not name
it) on Wadden Sea mudflats, one folder per seal named by the centre's catalogue, split
by the flank shown. Labels are individual seals; a photo may show other seals besides
the labelled one. 35 of the 142 committed photos are missing from the snapshot and are
skipped, as is the one seal with a single photo, leaving 106 photos of 12 seals.

Writes the photos under ``<output>/harbour_seal/<name>/`` and ``<output>/metadata.csv``
(image_id, identity, path, species, orientation = left | right | blank).

Run (after the ``fetch`` tool brought the repository into the mirror)::

    python benchmarks/datasets/fetch_pieterburen_seals.py [MIRROR_GIT_DIR] [OUTPUT_DIR]
    wildreid split ../data/pieterburen_seals --output ../data/pieterburen_seals-open --kind open
"""

from __future__ import annotations

import csv
import subprocess
import sys
from collections import Counter
from pathlib import Path

COMMIT = "da10b75af9d06b7afd82a7f420f5362884649eed"
MIRROR = "/work/.mirror/ciziks+seal-photo-identification/repo"
OUTPUT = Path(__file__).resolve().parents[2].parent / "data" / "pieterburen_seals"
SPECIES = "harbour_seal"
ROOT = "MVP/sample_seals/"


def git(git_dir: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", f"--git-dir={git_dir}", *args], capture_output=True)


def main(git_dir: str = MIRROR, output: Path = OUTPUT) -> None:
    listing = git(git_dir, "ls-tree", "-r", "--name-only", COMMIT, ROOT).stdout.decode()
    photos = {}
    for path in listing.splitlines():
        if not path.lower().endswith((".jpg", ".jpeg", ".png")):
            continue
        data = git(git_dir, "show", f"{COMMIT}:{path}")
        if data.returncode == 0:  # blobs left out of the snapshot fail here
            photos[path] = data.stdout
    counts = Counter(path[len(ROOT) :].split("/")[0] for path in photos)
    rows = []
    for path, data in sorted(photos.items()):
        parts = path[len(ROOT) :].split("/")
        name, side = parts[0], parts[1].lower() if len(parts) == 3 else ""
        if counts[name] < 2:
            continue
        target = output / SPECIES / name.lower() / f"{side or 'unknown'}_{parts[-1]}"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        relative = target.relative_to(output).as_posix()
        rows.append(
            {
                "image_id": relative.rsplit(".", 1)[0],
                "identity": name.lower(),
                "path": relative,
                "species": SPECIES,
                "orientation": side,
            }
        )
    with open(output / "metadata.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    print(f"{len(rows)} photos of {len({r['identity'] for r in rows})} seals in {output}")


if __name__ == "__main__":
    main(*sys.argv[1:2], *[Path(p) for p in sys.argv[2:3]])
