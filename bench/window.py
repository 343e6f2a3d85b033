"""A GPU window's budget and its parts, shared by the benches `make gpu-window` runs
(`bench/model_gpu.py`, `bench/dataset_gpu.py`): each figure is kept and printed the moment it
is measured, a part whose estimate exceeds the budget left is skipped with a line saying so,
and a part that raises costs only its own rows."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch


@dataclass(kw_only=True)  # a subclass's own fields stay positional before these
class Outcomes:
    """The parts that did not run: skipped (over the budget, no compiler) or failed."""

    skipped: dict[str, str] = field(default_factory=dict)  # part -> why
    failed: dict[str, str] = field(default_factory=dict)  # part -> the error it raised


@dataclass
class Window:
    """The run's time budget, and where each figure goes the moment it is measured: stdout
    (what a short GPU window brings back) and `figures` (a file under its output folder)."""

    budget_s: float | None  # None: no budget
    figures: Path | None = None
    fail_part: str | None = None  # a rehearsal: this part raises
    no_compile: str | None = None  # why torch.compile cannot run here (its levers skipped)
    start: float = field(default_factory=time.monotonic)

    def left(self) -> float:
        if self.budget_s is None:
            return math.inf
        return self.budget_s - (time.monotonic() - self.start)

    def figure(self, line: str) -> None:
        # Kept first, printed second: whoever reads the line can find it in the file.
        if self.figures is not None:
            with self.figures.open("a") as out:
                out.write(line + "\n")
        print(f"figure: {line}", flush=True)


def run_part(
    name: str, estimate_s: float, window: Window, results: Outcomes, fn: Callable[[], None]
) -> bool:
    """One part of the run: skipped, with a line saying so, when its estimate exceeds the
    budget left; an exception (out of memory included) costs only this part's rows."""
    if window.no_compile and "compile" in name:
        results.skipped[name] = f"torch.compile cannot run here: {window.no_compile}"
        print(f"skipped: {name}: {results.skipped[name]}", flush=True)
        return False
    if estimate_s > window.left():
        results.skipped[name] = f"estimated {estimate_s:.0f} s, {max(window.left(), 0):.0f} s left"
        print(f"skipped: {name}: {results.skipped[name]}", flush=True)
        return False
    try:
        if name == window.fail_part:
            raise RuntimeError(f"forced to fail (--fail-part {name!r})")
        fn()
        return True
    except Exception as error:  # any error of one part must spare the others
        said = str(error).strip().splitlines()[0][:160] if str(error).strip() else ""
        results.failed[name] = f"{type(error).__name__}: {said}".rstrip(": ")
        print(f"failed: {name}: {results.failed[name]}", flush=True)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        return False
