"""The documentation: README.md stays short and its links lead to files that exist; docs/
builds with MkDocs in strict mode (a broken link or anchor fails), and a broken copy fails."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

MKDOCS = Path(sys.executable).with_name("mkdocs")


def build(config: Path, site: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(MKDOCS), "build", "--strict", "--config-file", str(config), "--site-dir", str(site)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_readme_fits_a_few_screens_and_its_links_exist():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    links = re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", readme)
    local = [link for link in links if "://" not in link]
    assert any(link.startswith("docs/") for link in local)
    assert [link for link in local if not (REPO / link).exists()] == []


@pytest.mark.skipif(not MKDOCS.exists(), reason="mkdocs is not installed (requirements.lock)")
def test_the_docs_build_strictly_and_a_broken_link_fails(tmp_path):
    done = build(REPO / "mkdocs.yml", tmp_path / "site")
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "site" / "serving" / "index.html").is_file()

    copy = tmp_path / "copy"
    shutil.copytree(REPO / "docs", copy / "docs")
    shutil.copy(REPO / "mkdocs.yml", copy / "mkdocs.yml")
    serving = copy / "docs" / "serving.md"
    serving.write_text(serving.read_text() + "\nSee [nowhere](missing.md).\n")
    broken = build(copy / "mkdocs.yml", tmp_path / "broken")
    assert broken.returncode != 0 and "missing.md" in broken.stderr
    serving.write_text(serving.read_text().replace("(missing.md)", "(training.md#no-such-part)"))
    broken = build(copy / "mkdocs.yml", tmp_path / "broken-anchor")
    assert broken.returncode != 0 and "no-such-part" in broken.stderr
