"""One door to every benchmark: ``python benchmarks NAME [ARGS]`` (from the repository root) runs
``benchmarks/NAME.py`` with ARGS (``-`` or ``_`` alike); ``python benchmarks`` lists them, each
with the first line of its docstring. Each also runs on its own (``python
benchmarks/NAME.py --help``). Result files go to ``benchmarks/results/`` (never overwritten), and
``python benchmarks results-table`` turns them into RESULTS.md, the README's table and the
decision records' evidence.
"""

from __future__ import annotations

import ast
import runpy
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
#: Modules that are shared code, not benchmarks.
_SHARED = {"__main__", "common"}


def benchmarks() -> dict[str, Path]:
    """Every benchmark script, by its name as typed (``one-command``)."""
    return {path.stem.replace("_", "-"): path for path in sorted(HERE.glob("*.py"))
            if path.stem not in _SHARED}


def summary(path: Path) -> str:
    """The first line of a script's docstring (read without importing it)."""
    docstring = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    return docstring.strip().split("\n\n")[0].replace("\n", " ")


def main(argv: list[str]) -> int:
    found = benchmarks()
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: python benchmarks NAME [ARGS]   (python benchmarks NAME --help)\n")
        width = max(map(len, found))
        for name, path in found.items():
            print(f"  {name:<{width}}  {summary(path)}")
        return 0
    name = argv[0].replace("_", "-").removesuffix(".py")
    if name not in found:
        print(f"no benchmark {argv[0]!r}; the benchmarks are {', '.join(found)}", file=sys.stderr)
        return 2
    sys.argv = [str(found[name]), *argv[1:]]
    sys.path.insert(0, str(HERE))  # the scripts import common.py beside them
    runpy.run_path(str(found[name]), run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
