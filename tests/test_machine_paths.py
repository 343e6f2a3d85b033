"""No path of the machine a file was written on: none in a file git tracks, and none in what
the benchmarks write into BENCHMARKS.md."""

from __future__ import annotations

import re
import subprocess
import tempfile

import pytest

from bench.report import write_section
from tests.conftest import REPO

# Folders that exist on one machine only: a checkout's or a user's, the temp folder, a mount;
# spelled without slashes so that this file does not match itself.
MACHINE_FOLDERS = ("work", "tmp", "root", "home", "Users", "mnt", "private/var", "var/folders")
PATH_TAIL = r"[^\s`'\"),:;\]}]*"  # up to a space, a quote, a bracket or a separator
MACHINE_PATH = re.compile(
    rf"(?<![\w.~$/-])/(?:{'|'.join(map(re.escape, MACHINE_FOLDERS))})(?![\w-]){PATH_TAIL}"
    rf"|[\w.~/-]*/(?:site|dist)-packages\b{PATH_TAIL}"  # an installed package's files
)
# In the image and its pods: the writable temp folder, HOME and the caches, the same wherever
# the image runs.
IN_CONTAINER = {"Dockerfile": {"tmp"}, "k8s/": {"tmp"}}


def tracked_text_files() -> list[str]:
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, text=True)
    if listed.returncode != 0:
        pytest.skip("not a git checkout")
    return [name for name in listed.stdout.split("\0") if name and (REPO / name).is_file()]


def machine_paths(name: str, text: str) -> list[str]:
    """`file:line: path` of each machine path in `text`, the file's content."""
    if name.endswith("ignore"):  # .gitignore's leading slash anchors a pattern: not a path
        return []
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        for match in MACHINE_PATH.finditer(line):
            folder = match.group().split("/")[1]
            if any(name.startswith(f) and folder in ok for f, ok in IN_CONTAINER.items()):
                continue
            found.append(f"{name}:{number}: {match.group()}")
    return found


def test_no_tracked_file_holds_a_machine_path():
    found = []
    for name in tracked_text_files():
        data = (REPO / name).read_bytes()
        if b"\0" in data:
            continue  # binary
        try:
            found += machine_paths(name, data.decode())
        except UnicodeDecodeError:
            continue
    assert not found, "paths of one machine in tracked files:\n" + "\n".join(found)


def test_machine_paths_are_recognised():
    # Joined here, so that this file holds none of these paths.
    checkout, package = "/" + "home/alice/cameo", "/usr/lib/python3/" + "site-packages/x.py"
    text = f"in {checkout}/models: x\nfrom {package}\nok: models/x, .dvc/tmp"
    assert machine_paths("README.md", text) == [
        f"README.md:1: {checkout}/models",
        f"README.md:2: {package}",
    ]
    tmp = "/" + "tmp"
    assert machine_paths("k8s/job.yaml", f"value: {tmp}") == []
    assert machine_paths("README.md", f"value: {tmp}") == [f"README.md:1: {tmp}"]
    assert machine_paths(".gitignore", tmp) == []


def test_the_benchmarks_write_no_machine_path(tmp_path, monkeypatch):
    models = tmp_path / "weights"
    monkeypatch.setenv("CAMEO_MODELS", str(models))
    report = tmp_path / "BENCHMARKS.md"
    body = f"in {REPO}/models/x, {models}/antelopev2 and {tempfile.gettempdir()}/y. {REPO}."
    write_section("paths", body, report)
    text = report.read_text()
    assert "in ./models/x, $CAMEO_MODELS/antelopev2 and $TMPDIR/y. ." in text
    assert not machine_paths("BENCHMARKS.md", text)
