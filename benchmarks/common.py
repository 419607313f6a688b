"""What the benchmark scripts share: where the shared nyala-lion benchmark lives, and how result
files are named (never overwritten)."""

from pathlib import Path

#: ../shared/bench/nyala-lion beside the repository, as in CI.
DEFAULT_BENCH = Path(__file__).resolve().parents[2] / "shared" / "bench" / "nyala-lion"


def unused_path(path: Path) -> Path:
    """``path``, or ``path`` with ``-2``, ``-3``... before its suffix when it exists: a result file
    is never overwritten."""
    path = Path(path)
    candidate, number = path, 1
    while candidate.exists():
        number += 1
        candidate = path.with_name(f"{path.stem}-{number}{path.suffix}")
    return candidate
