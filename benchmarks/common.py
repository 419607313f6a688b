"""What the benchmark scripts share: where the shared nyala-lion benchmark lives."""

from pathlib import Path

#: ../shared/bench/nyala-lion beside the repository, as in CI.
DEFAULT_BENCH = Path(__file__).resolve().parents[2] / "shared" / "bench" / "nyala-lion"
