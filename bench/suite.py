"""`make test` on a fresh clone, timed part by part: the install, then each pytest run of
`make test` (the parallel part, the serial part) with its slowest tests (`--durations`). The
target is 12 minutes on 2 cores, install included.

    python -m bench.suite                         # clone HEAD into a temp dir, run, report
    python -m bench.suite --before LOG [LOG ...]  # also list an earlier run's slowest tests

Nothing else should run on the machine meanwhile: the figure is the wall time a developer waits.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench.report import REPO, write_section

SECTION = "Test suite: make test on a fresh clone"
SLOWEST = 15
# pytest's --durations lines: "12.34s call     tests/x.py::test_y".
DURATION = re.compile(r"^(?P<seconds>\d+\.\d+)s (?P<when>setup|call|teardown)\s+(?P<test>\S+)")
# pytest's closing line: "=== 12 passed, 1 skipped in 3.45s (0:00:03) ===".
CLOSING = re.compile(r"^=+ (?P<counts>.+) in (?P<seconds>[\d.]+)s.* =+$")


@dataclass
class Part:
    """One command of `make test`, timed."""

    name: str
    seconds: float
    outcome: str = ""
    slowest: list[tuple[float, str]] = field(default_factory=list)


def slowest_tests(log: str) -> list[tuple[float, str]]:
    """(seconds, "when test") of every --durations line of a pytest log, slowest first."""
    # xdist's loadgroup appends "@<group>" to each test id: left out.
    found = [
        (float(m["seconds"]), f"{m['when']} {m['test'].rsplit('@', 1)[0]}")
        for m in map(DURATION.match, log.splitlines())
        if m
    ]
    return sorted(found, reverse=True)


def timed_make(target: str, clone: Path, env: dict[str, str]) -> tuple[float, str]:
    print(f"make {target} in {clone}", flush=True)
    start = time.perf_counter()
    done = subprocess.run(["make", target], cwd=clone, env=env, capture_output=True, text=True)
    seconds, log = time.perf_counter() - start, done.stdout + done.stderr
    if done.returncode != 0:
        sys.exit(f"make {target} failed ({done.returncode}):\n{log[-4000:]}")
    print(f"make {target}: {seconds:.0f} s", flush=True)
    return seconds, log


def pytest_parts(log: str) -> list[Part]:
    """Each pytest session of a `make test` log: its wall time and outcome (its closing line),
    and its slowest tests."""
    sessions = re.split(r"^=+ test session starts =+$", log, flags=re.M)[1:]
    parts = []
    for number, session in enumerate(sessions, 1):
        closing = next(m for m in map(CLOSING.match, session.splitlines()) if m)
        name = f"pytest run {number} of {len(sessions)}"
        parts.append(
            Part(name, float(closing["seconds"]), closing["counts"], slowest_tests(session))
        )
    return parts


def measure(clone: Path) -> list[Part]:
    """`make venv`, then `make test` with --durations, on a fresh clone of HEAD."""
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    # A cold compile cache, as on a new machine (inductor's default one outlives the clone).
    env["TORCHINDUCTOR_CACHE_DIR"] = str(clone / ".cache" / "torchinductor")
    install, _ = timed_make("venv", clone, env)
    env["PYTEST_ADDOPTS"] = f"--durations={SLOWEST}"
    test, log = timed_make("test", clone, env)
    runs = pytest_parts(log)
    rest = Part("ruff and pytest's start-ups", test - sum(part.seconds for part in runs))
    return [Part("install (make venv)", install), *runs, rest]


def render(parts: list[Part], before: list[tuple[float, str]], before_label: str = "") -> str:
    total = sum(part.seconds for part in parts)
    lines = [
        "`python -m bench.suite`: `make test`'s commands on a fresh clone of HEAD, nothing else "
        f"running. **Total {total / 60:.1f} min** (target: 12 min on 2 cores, install "
        "included).",
        "",
        "| part | wall time | tests |",
        "| --- | --- | --- |",
        *(f"| {p.name} | {p.seconds / 60:.1f} min | {p.outcome} |" for p in parts),
    ]
    for part in parts:
        if part.slowest:
            lines += ["", f"Slowest of the {part.name}:", "", "| s | test |", "| --- | --- |"]
            lines += [f"| {s:.1f} | `{test}` |" for s, test in part.slowest[:SLOWEST]]
    if before:
        lines += [
            "",
            f"Before, for comparison: the slowest tests of {before_label or 'an earlier run'}:",
            "",
            "| s | test |",
            "| --- | --- |",
        ]
        lines += [f"| {s:.1f} | `{test}` |" for s, test in before[:SLOWEST]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[Part]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", nargs="*", type=Path, default=[], help="earlier pytest logs")
    parser.add_argument("--before-label", default="", help="what the earlier run was")
    parser.add_argument("--report", type=Path, help="default: BENCHMARKS.md")
    args = parser.parse_args(argv)
    before = sorted(
        (entry for log in args.before for entry in slowest_tests(log.read_text())), reverse=True
    )
    with tempfile.TemporaryDirectory(prefix="cameo-suite-") as tmp:
        parts = measure(Path(tmp) / "cameo")
    section = render(parts, before, args.before_label)
    write_section(SECTION, section, *([args.report] if args.report else []))
    print(section)
    return parts


if __name__ == "__main__":
    main()
