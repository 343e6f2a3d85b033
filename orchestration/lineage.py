"""Lineage: from a registered model version or an MLflow run back to the data it was trained on.

    model version → MLflow run → dataset digest (the DVC md5 of data/triplets) → the git
    commits whose dvc.lock records that md5 → the run's params → the Dagster runs that
    materialised the dataset

`trace(uri)` follows the chain; `checkout(lineage)` restores that exact dataset in a git
worktree of the commit (`git worktree add` + `dvc checkout`, else `dvc pull`), beside the
user's workspace rather than in it, and checks its md5 against the run's.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from core.versioning import LOCK_FILE, dvc_md5, git, git_root, locked_out_path
from training.tracking import REGISTERED_MODEL

if TYPE_CHECKING:
    from dagster import DagsterInstance
    from mlflow.entities.model_registry import ModelVersion

DATASET_ASSET = "triplets"  # the Dagster asset whose materialisations record `dvc_md5`
LINEAGE_DIR = ".lineage"  # default home of restored datasets, git-ignored
_PAGE = 100  # Dagster materialisation records fetched per query


class LineageError(RuntimeError):
    """One line: what is missing, and what to do about it."""


@dataclass(frozen=True)
class ModelRef:
    name: str
    version: str
    aliases: tuple[str, ...]
    dataset_md5: str | None  # the version's tag: the dataset its checkpoint was trained on


@dataclass(frozen=True)
class Commit:
    """A commit whose dvc.lock records the dataset's md5, as the out `path`."""

    sha: str
    date: str  # committer date, ISO 8601
    subject: str
    path: str


@dataclass(frozen=True)
class DagsterRun:
    run_id: str
    timestamp: str  # of the materialisation, ISO 8601 UTC


@dataclass(frozen=True)
class Lineage:
    model: ModelRef | None  # None when the URI names a run
    run_id: str
    experiment: str
    run_status: str
    code_commit: str | None  # the run's `git_commit` tag: HEAD when it trained
    dataset_md5: str
    dataset_source: str  # "run", or "model version" when the run only logged the model
    dataset_locked: bool | None  # False: trained with --unlocked on an unversioned dataset
    commits: tuple[Commit, ...]  # newest first
    params: dict[str, str]
    dagster_runs: tuple[DagsterRun, ...]  # newest first

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    def lines(self) -> list[str]:
        """The chain for people, one line a link."""
        if self.model is None:
            model = "- (the URI names a run)"
        else:
            aliases = "".join(f" @{alias}" for alias in self.model.aliases)
            model = f"{self.model.name} version {self.model.version}{aliases}"
        code = f", code at {self.code_commit[:12]}" if self.code_commit else ""
        dataset = self.dataset_md5
        if self.dataset_locked is not None:
            dataset += ", locked in dvc.lock" if self.dataset_locked else ", unlocked"
        if self.dataset_source != "run":
            source = self.dataset_source
            dataset += f" (the {source}'s tag: its run logged the model, not trained it)"
        if self.commits:
            newest = self.commits[0]
            git = f"{newest.sha[:12]} {newest.date} {newest.subject!r}: {newest.path}"
            if len(self.commits) > 1:
                git += f" (also in {', '.join(c.sha[:12] for c in self.commits[1:])})"
        else:
            git = missing_commit_reason(self)
        # The training run's own params; the logged model's settings (`faces/…`, `poses/…`,
        # `serving/…`) are in --json.
        params = " ".join(
            f"{key}={value}" for key, value in sorted(self.params.items()) if "/" not in key
        )
        dagster = ", ".join(f"{run.run_id} at {run.timestamp}" for run in self.dagster_runs)
        return [
            f"model    {model}",
            f"run      {self.run_id} (experiment {self.experiment}, {self.run_status}{code})",
            f"dataset  {dataset}",
            f"git      {git}",
            f"params   {params or '-'}",
            f"dagster  {dagster or f'no run of the {DATASET_ASSET} asset recorded this md5'}",
        ]


def missing_commit_reason(lineage: Lineage) -> str:
    """Why no commit holds the dataset, and what to do."""
    md5 = lineage.dataset_md5
    if lineage.dataset_locked is False:
        return (
            f"no commit's {LOCK_FILE} records {md5}: the run trained with --unlocked on an "
            "unversioned dataset, which git and DVC cannot restore (to restore a dataset later, "
            f"train on one that `dvc repro` locked and {LOCK_FILE} committed)"
        )
    return (
        f"no commit's {LOCK_FILE} records {md5}: commit the {LOCK_FILE} the run trained with "
        f"(in the clone that trained it), or fetch the branch that has it"
    )


# ---------------------------------------------------------------------------------------------
# Tracing


def trace(
    uri: str, *, repo: str | Path | None = None, instance: DagsterInstance | None = None
) -> Lineage:
    """The lineage of `uri`: `models:/NAME@ALIAS`, `models:/NAME/VERSION`, a bare version of
    cameo-inpaint, `runs:/RUN_ID/…` or an MLflow run id.

    MLflow is read where it is configured (`training.tracking.configure_tracking`), git in
    `repo` (default: the working directory's), Dagster from `instance` (default: the one of
    `$DAGSTER_HOME`).
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient()
    model, run_id = _resolve(uri, client)
    try:
        run = client.get_run(run_id)
    except MlflowException:
        raise LineageError(
            f"no MLflow run {run_id} in {mlflow.get_tracking_uri()}: pass a run id, a version "
            f"of {REGISTERED_MODEL} or models:/NAME@ALIAS (set MLFLOW_TRACKING_URI to the "
            "store that has it)"
        ) from None
    tags = run.data.tags
    md5, source = tags.get("dataset_md5"), "run"
    if not md5 and model is not None and model.dataset_md5:
        # `cameo model log` of a checkpoint that names no training run (checkpoints/final/):
        # the version's run only logged it, but the checkpoint still names its dataset.
        md5, source = model.dataset_md5, "model version"
    if not md5:
        raise LineageError(
            f"MLflow run {run_id} has no dataset_md5 tag: it is not a run of `cameo train`"
        )
    locked = tags.get("dataset_locked")
    return Lineage(
        model=model,
        run_id=run_id,
        experiment=client.get_experiment(run.info.experiment_id).name,
        run_status=run.info.status,
        code_commit=tags.get("git_commit"),
        dataset_md5=md5,
        dataset_source=source,
        dataset_locked=None if locked is None else locked == "true",
        commits=tuple(commits_with_md5(md5, repository_root(repo))),
        params=dict(sorted(run.data.params.items())),
        dagster_runs=tuple(dagster_runs(md5, instance)),
    )


def _resolve(uri: str, client) -> tuple[ModelRef | None, str]:
    """The model version `uri` names (None for a run) and the run that trained it."""
    from mlflow.exceptions import MlflowException

    from training.tracking import registered_version

    if uri.startswith("runs:/"):
        return None, uri.removeprefix("runs:/").split("/")[0]
    if not uri.isdigit() and not uri.startswith("models:/"):
        return None, uri
    # A bare number is a version of cameo-inpaint.
    models_uri = f"models:/{REGISTERED_MODEL}/{uri}" if uri.isdigit() else uri
    try:
        version = registered_version(models_uri, client)
    except MlflowException:
        raise LineageError(
            f"{uri} names no registered model version: `cameo model list` shows the versions "
            f"and aliases of {REGISTERED_MODEL}"
        ) from None
    if version is None:
        raise LineageError(
            f"{uri}: expected models:/NAME@ALIAS or models:/NAME/VERSION "
            f"(e.g. models:/{REGISTERED_MODEL}@champion)"
        )
    return _model_ref(version), _training_run(version)


def _model_ref(version: ModelVersion) -> ModelRef:
    return ModelRef(
        version.name,
        str(version.version),
        tuple(sorted(version.aliases)),
        version.tags.get("dataset_md5"),
    )


def _training_run(version: ModelVersion) -> str:
    # `cameo model log` logs a checkpoint in a run of its own; the version's tag names the
    # run that trained it (serving.registry.log_model).
    run_id = version.tags.get("training_run_id") or version.run_id
    if not run_id:
        raise LineageError(
            f"{version.name} version {version.version} names no training run: it was not "
            "logged by `cameo train` or `cameo model log`"
        )
    return run_id


# ---------------------------------------------------------------------------------------------
# Git: the commits whose dvc.lock records the md5


def repository_root(path: str | Path | None = None) -> Path:
    """The top of the git working tree holding `path` (default: the working directory)."""
    root = git_root(path)
    if root is None:
        start = Path(path or Path.cwd())
        raise LineageError(f"{start} is not in a git repository: run this in the project's clone")
    return root


def commits_with_md5(md5: str, root: Path) -> list[Commit]:
    """Every commit that changed dvc.lock and whose dvc.lock records `md5`, newest first."""
    log = git(root, "log", "--format=%H%x1f%cI%x1f%s", "--", LOCK_FILE)
    if log.returncode != 0:  # e.g. a repository without commits
        return []
    found = []
    for line in log.stdout.splitlines():
        sha, date, subject = line.split("\x1f", 2)
        shown = git(root, "show", f"{sha}:{LOCK_FILE}")
        if shown.returncode != 0:  # the commit deleted dvc.lock
            continue
        path = locked_out_path(yaml.safe_load(shown.stdout), md5)
        if path is not None:
            found.append(Commit(sha, date, subject, path))
    return found


# ---------------------------------------------------------------------------------------------
# Dagster: the runs whose materialisation of the dataset recorded the md5


def dagster_runs(md5: str, instance: DagsterInstance | None = None) -> list[DagsterRun]:
    """The runs that materialised the `triplets` asset with metadata `dvc_md5` = `md5`, newest
    first (assets.triplets records it)."""
    from dagster import AssetKey, DagsterInstance

    if instance is None:
        with DagsterInstance.get() as owned:
            return dagster_runs(md5, owned)
    found, cursor = [], None
    while True:
        page = instance.fetch_materializations(AssetKey(DATASET_ASSET), limit=_PAGE, cursor=cursor)
        for record in page.records:
            recorded = record.asset_materialization.metadata.get("dvc_md5")
            if recorded is not None and recorded.value == md5:
                when = datetime.fromtimestamp(record.timestamp, UTC)
                found.append(DagsterRun(record.run_id, when.isoformat(timespec="seconds")))
        if not page.has_more:
            return found
        cursor = page.cursor


# ---------------------------------------------------------------------------------------------
# Checkout


@dataclass(frozen=True)
class Restored:
    worktree: Path  # a git worktree of `commit`
    dataset: Path  # the restored dataset inside it
    commit: Commit


def checkout(
    lineage: Lineage, into: str | Path | None = None, repo: str | Path | None = None
) -> Restored:
    """Restore the dataset of `lineage` in a git worktree of the newest commit that locks it
    (default `<repo>/.lineage/<md5 prefix>`) from the repo's DVC cache, else its remote, and
    check that its md5 is the run's. The user's workspace is untouched.

    A worktree that already holds the dataset is returned as it is.
    """
    if not lineage.commits:
        raise LineageError(missing_commit_reason(lineage))
    root = repository_root(repo)
    commit = lineage.commits[0]
    md5 = lineage.dataset_md5
    worktree = Path(into).resolve() if into else root / LINEAGE_DIR / md5[:12]
    restored = Restored(worktree, worktree / commit.path, commit)
    if worktree.is_dir() and any(worktree.iterdir()):
        if restored.dataset.is_dir() and dvc_md5(restored.dataset) == md5:
            return restored
        raise LineageError(
            f"{worktree} exists and does not hold dataset {md5}: remove it "
            f"(git worktree remove --force {worktree}) or pass another --into"
        )
    added = git(root, "worktree", "add", "--detach", str(worktree), commit.sha)
    if added.returncode != 0:
        raise LineageError(f"git worktree add {worktree} {commit.sha[:12]}: {_last_line(added)}")
    try:
        _dvc_restore(root, worktree, restored.dataset, md5)
        digest = dvc_md5(restored.dataset)
        if digest != md5:
            raise LineageError(f"{restored.dataset} has md5 {digest}, not the run's {md5}")
    except BaseException:
        # Leave nothing half-made behind: a rerun starts afresh.
        git(root, "worktree", "remove", "--force", str(worktree))
        shutil.rmtree(worktree, ignore_errors=True)
        raise
    return restored


def _dvc_restore(root: Path, worktree: Path, dataset: Path, md5: str) -> None:
    """`dvc checkout` of `dataset` in the worktree from the repo's cache, else `dvc pull` from
    the repo's remotes. The worktree's local DVC config names the repo's cache and remotes
    (as the repo resolves them: relative remote paths would point elsewhere from the
    worktree), so DVC commands run in the worktree later use them too."""
    from dvc.exceptions import CheckoutError, DvcException
    from dvc.repo import Repo

    with Repo(str(root)) as source:
        cache_dir = source.cache.local_cache_dir
        remotes = {name: dict(settings) for name, settings in source.config["remote"].items()}
        default_remote = source.config["core"].get("remote")
    with Repo(str(worktree)) as restored, restored.config.edit("local") as config:
        config["cache"]["dir"] = cache_dir
        config["remote"].update(remotes)
        if default_remote:
            config["core"]["remote"] = default_remote
    with Repo(str(worktree)) as restored:
        try:
            restored.checkout(targets=[str(dataset)])
            return
        except CheckoutError:
            pass  # not (all) in the cache: the remote may have it
        if not default_remote:
            raise LineageError(
                f"dataset {md5} is not in the DVC cache {cache_dir} and no default DVC remote "
                "is configured: `dvc remote add -d` one that has it"
            )
        try:
            restored.pull(targets=[str(dataset)])
        except CheckoutError:  # the remote lacks it too
            raise LineageError(
                f"dataset {md5} is neither in the DVC cache {cache_dir} nor on remote "
                f"{default_remote!r}: `dvc push` it from a clone that has it"
            ) from None
        except DvcException as error:
            raise LineageError(
                f"dataset {md5} is not in the DVC cache {cache_dir}, and pulling it from remote "
                f"{default_remote!r} failed: {_one_line(str(error))}"
            ) from None


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _last_line(result: subprocess.CompletedProcess[str]) -> str:
    lines = (result.stderr or result.stdout).strip().splitlines()
    return lines[-1] if lines else f"exit status {result.returncode}"
