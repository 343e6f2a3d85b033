"""The dataset as a DVC user drives it, for real, in a temporary clone of the repo: inputs
tracked and pulled, incremental repro, `dvc exp run -S`, metrics, going back."""

import json
import os
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from assets.sample_movie import (
    INSTALL_SPRITES,
    SHOTS,
    renpy_sprites,
    write_anime_singles,
    write_sample_movie,
)
from core.layout import DataLayout
from tests.conftest import REPO

pytestmark = pytest.mark.slow

# What `dvc push`, `pull`, `checkout` and `status` look at here: the inputs, the synthetic
# characters (none: off) and the dataset (the clone trains nothing, so the train stage's
# outputs are not in its cache).
DATASET = ("synthetic", "dataset", "data/movies.dvc", "data/singles.dvc")


def run(cwd: Path, *args: str, env: dict[str, str]) -> str:
    """Run a command in `cwd`; its output, or a failure that shows it."""
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, f"{' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


def clone_repo(target: Path, env: dict[str, str]) -> Path:
    """The repo's files as git sees them (tracked and new, not ignored), committed in a new
    repository at `target`."""
    files = run(REPO, "git", "ls-files", "-z", "-co", "--exclude-standard", env=env)
    for name in filter(None, files.split("\0")):
        if (REPO / name).is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, target / name)
    run(target, "git", "init", "-q", env=env)
    run(target, "git", "add", "-A", env=env)
    run(target, "git", "commit", "-qm", "clone", env=env)
    return target


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, str]:
    home = tmp_path_factory.mktemp("dagster_home")
    environ = {k: v for k, v in os.environ.items() if k not in ("CAMEO_DATA", "CAMEO_PARAMS")}
    return {
        **environ,
        "DAGSTER_HOME": str(home),
        "DVC_SITE_CACHE_DIR": str(home / "dvc-site-cache"),
        "GIT_AUTHOR_NAME": "test",
        "GIT_AUTHOR_EMAIL": "test@example.com",
        "GIT_COMMITTER_NAME": "test",
        "GIT_COMMITTER_EMAIL": "test@example.com",
    }


@pytest.fixture(scope="module")
def built(tmp_path_factory, sample_root: Path, env) -> Path:
    """A clone with the sample inputs added (the anime sprites too, as `cameo sample-movie`
    adds them where installed) and the dataset stage reproduced and pushed."""
    repo = clone_repo(tmp_path_factory.mktemp("clone"), env)
    for folder in ("movies", "singles"):
        shutil.copytree(sample_root / folder, repo / "data" / folder)
    write_anime_singles(DataLayout(repo / "data"))
    run(repo, "dvc", "add", "data/movies", "data/singles", env=env)
    run(repo, "dvc", "repro", "dataset", env=env)
    run(repo, "dvc", "push", *DATASET, env=env)
    return repo


def test_a_build_gives_the_committed_versions(built: Path, env):
    # Inputs, dataset version and metrics as the repo commits them (data/*.dvc, dvc.lock,
    # data/metrics.json): `make demo` on a fresh clone leaves git status clean, on a machine
    # with the sprites' packages (as .ci/run installs them).
    if not all(renpy_sprites().values()):
        pytest.skip(f"the committed dataset holds the anime sprites: {INSTALL_SPRITES}")
    assert run(built, "git", "status", "--porcelain", env=env) == ""


def test_a_fresh_clone_pulls_inputs_and_dataset(built: Path, tmp_path: Path, env):
    fresh = tmp_path / "fresh"
    run(tmp_path, "git", "clone", "-q", str(built), str(fresh), env=env)
    run(fresh, "dvc", "remote", "modify", "local", "url", str(built / ".dvc-remote"), env=env)
    run(fresh, "dvc", "pull", *DATASET, env=env)
    for folder in ("movies", "singles", "synthetic", "triplets"):
        expected = sorted(p.relative_to(built) for p in (built / "data" / folder).rglob("*"))
        assert sorted(p.relative_to(fresh) for p in (fresh / "data" / folder).rglob("*")) == (
            expected
        )
    assert "up to date" in run(fresh, "dvc", "status", *DATASET, env=env)


def test_metrics_are_the_dataset_counts(built: Path, env):
    shown = json.loads(run(built, "dvc", "metrics", "show", "--json", env=env))
    metrics = shown[""]["data"]["data/metrics.json"]["data"]
    assert metrics["triplets"] == metrics["from_movies"] + metrics["from_singles"] >= 1
    assert metrics["characters"] >= 3 and metrics["skipped"]["total"] >= 1


def back_to_the_commit(repo: Path, env: dict[str, str]) -> None:
    run(repo, "git", "checkout", "--", ".", env=env)
    run(repo, "dvc", "checkout", *DATASET, env=env)


def test_one_more_movie_builds_only_that_movie(built: Path, env, tmp_path: Path):
    # A short movie (one shot of 60 frames): what is built is the new movie's, however long.
    second = write_sample_movie(DataLayout(tmp_path), "second", (replace(SHOTS[0], frames=60),))
    shutil.copy(second, built / "data/movies/second.mp4")
    first = (built / "data/frames/sample.status.json").read_text()
    run(built, "dvc", "add", "data/movies", env=env)
    out = run(built, "dvc", "repro", "dataset", env=env)
    assert "sample (sample.mp4): up to date" in out
    assert (built / "data/frames/sample.status.json").read_text() == first  # not rebuilt
    assert json.loads((built / "data/frames/second.status.json").read_text())["status"] == "ok"
    back_to_the_commit(built, env)
    assert not (built / "data/movies/second.mp4").exists()
    assert "up to date" in run(built, "dvc", "status", *DATASET, env=env)


def experiments(shown: list[dict]) -> list[dict]:
    """The workspace, the commit and each experiment of `dvc exp show --json`."""
    found = []
    for row in shown:
        found.append(row["data"])
        found += [rev["data"] for exp in row.get("experiments") or [] for rev in exp["revs"]]
    return found


def test_an_experiment_and_going_back(built: Path, env):
    # The triplet stage's seed: the movie's stages are current, only the movie's pairs are
    # redrawn; the single images' triplets are kept from the last build, not made again.
    kept_singles = {
        p: p.stat().st_mtime_ns for p in (built / "data/triplets-cache").glob("single-*/kept.json")
    }
    out = run(built, "dvc", "exp", "run", "dataset", "-S", "triplets.seed=1", env=env)
    assert "sample (sample.mp4): up to date" in out
    assert kept_singles and {p: p.stat().st_mtime_ns for p in kept_singles} == kept_singles
    shown = json.loads(run(built, "dvc", "exp", "show", "--json", env=env))
    triplets_by_seed = {
        data["params"]["params.yaml"]["data"]["triplets"]["seed"]: data["metrics"][
            "data/metrics.json"
        ]["data"]["triplets"]
        for data in experiments(shown)
    }
    assert set(triplets_by_seed) == {0, 1}
    # Back to the committed version: nothing modified, nothing to rebuild.
    back_to_the_commit(built, env)
    assert "up to date" in run(built, "dvc", "status", *DATASET, env=env)
    assert "didn't change" in run(built, "dvc", "repro", "dataset", env=env)
