"""BENCHMARKS.md: one section per benchmark, each rewritten in place by its own run."""

from __future__ import annotations

import os
import platform
import re
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from core.io import atomic_path

REPO = Path(__file__).resolve().parents[1]
REPORT = REPO / "BENCHMARKS.md"
PARAMS = REPO / "params.yaml"
HEADER = "# Benchmarks\n\nWritten by `make bench` (and `bench/*.py`); do not edit by hand.\n"


def machine() -> str:
    return f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"


def portable_paths(text: str) -> str:
    """`text` without the folders of the machine it was written on: the repository as `.`
    (its files relative to it), and the models directory, the temp folder and the home folder
    by name ($CAMEO_MODELS, $TMPDIR, ~). The report is committed: it is read on other machines,
    and their folders are not these."""
    names = {Path(tempfile.gettempdir()): "$TMPDIR", Path.home(): "~", REPO: "."}
    if os.environ.get("CAMEO_MODELS"):
        names[Path(os.environ["CAMEO_MODELS"])] = "$CAMEO_MODELS"
    spellings = {
        str(spelling): name
        for folder, name in names.items()
        for spelling in (folder, folder.resolve())
        if spelling.is_absolute() and spelling.parent != spelling  # never the root folder
    }
    # Longest first: a folder inside another (the repository in the home folder) keeps its name.
    for spelling in sorted(spellings, key=len, reverse=True):
        whole = rf"(?<![\w.~$/-]){re.escape(spelling)}(?![\w-]|\.\w)"  # not /x in /xy, /x.y
        text = re.sub(whole, lambda _, name=spellings[spelling]: name, text)
    return text


def write_section(name: str, body: str, report: Path = REPORT) -> None:
    """Replace (or append) the section `name` of the report, keeping the others; the paths of
    this machine in `body` made portable (`portable_paths`)."""
    body = portable_paths(body)
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
