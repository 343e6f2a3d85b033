"""BENCHMARKS.md: one section per benchmark, each rewritten in place by its own run."""

from __future__ import annotations

import platform
import re
from datetime import UTC, datetime
from pathlib import Path

from core.io import atomic_path

REPORT = Path(__file__).resolve().parents[1] / "BENCHMARKS.md"
HEADER = "# Benchmarks\n\nWritten by `make bench` (and `bench/*.py`); do not edit by hand.\n"


def machine() -> str:
    import os

    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def write_section(name: str, body: str, report: Path = REPORT) -> None:
    """Replace (or append) the section `name` of the report, keeping the others."""
    text = report.read_text() if report.exists() else HEADER
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    section = (
        f"<!-- section:{name} -->\n## {name}\n\n_{stamp}, {machine()}_\n\n{body.strip()}\n"
        f"<!-- /section:{name} -->\n"
    )
    pattern = re.compile(
        rf"<!-- section:{re.escape(name)} -->.*?<!-- /section:{re.escape(name)} -->\n", re.S
    )
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else f"{text}\n{section}"
    with atomic_path(report) as tmp:
        tmp.write_text(text)
