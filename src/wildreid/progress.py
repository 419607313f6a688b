"""Progress that shows throughput and time left, on stderr so outputs stay clean.

In a terminal: a live rich bar. In a log (CI, nohup, a pipe): one line every few seconds, since
a live bar would print nothing until the end.
"""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text


class RateColumn(ProgressColumn):
    """Items per second, e.g. ``312.4 images/s``."""

    def __init__(self, unit: str):
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        elapsed = task.finished_time if task.finished else task.elapsed
        if not elapsed or not task.completed:
            return Text(f"- {self.unit}/s", style="cyan")
        return Text(f"{task.completed / elapsed:,.1f} {self.unit}/s", style="cyan")


class LogProgress:
    """The subset of rich's Progress that wildreid uses, printing plain lines for logs."""

    def __init__(self, unit: str, console: Console, every: float = 10.0):
        self.unit, self.console, self.every = unit, console, every
        self.tasks: dict[int, dict] = {}

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc) -> None:
        for task in self.tasks.values():
            self._print(task, final=True)

    def add_task(self, description: str, total: int) -> int:
        now = time.perf_counter()
        self.tasks[len(self.tasks)] = {"description": description, "total": total, "done": 0,
                                       "start": now, "printed": now}
        return len(self.tasks) - 1

    def advance(self, task_id: int, amount: float = 1) -> None:
        task = self.tasks[task_id]
        task["done"] += amount
        if time.perf_counter() - task["printed"] >= self.every:
            self._print(task)

    def update(self, task_id: int, description: str) -> None:
        self.tasks[task_id]["description"] = description

    def _print(self, task: dict, final: bool = False) -> None:
        now = time.perf_counter()
        task["printed"] = now
        rate = task["done"] / max(now - task["start"], 1e-9)
        left = (task["total"] - task["done"]) / rate if rate > 0 else float("nan")
        tail = f"done in {now - task['start']:.1f} s" if final else f"ETA {left:.0f} s"
        self.console.print(f"{task['description']}: {task['done']:.0f}/{task['total']} "
                           f"{rate:,.1f} {self.unit}/s {tail}", highlight=False,
                           markup=False)  # descriptions name models and paths: not markup


def progress_bar(unit: str, enabled: bool = True) -> Progress | LogProgress:
    """Progress showing ``done/total``, ``unit``/s, elapsed time and ETA."""
    console = Console(stderr=True)
    if enabled and not console.is_terminal:
        return LogProgress(unit, console)
    return Progress(
        TextColumn("{task.description}", style="bold", markup=False),  # see LogProgress._print
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(unit),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
        disable=not enabled,
    )
