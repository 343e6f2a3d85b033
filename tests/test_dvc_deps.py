"""Code versions cannot drift from the code: every asset's code version is the digest of what
its entry modules import (`core.versioning.source_version`), the stage records use the same,
and dvc.yaml's deps cover it: each stage lists the folders of every file that its command and
the assets it materialises import, so `dvc repro` reruns a stage whenever code it runs has
changed."""

from __future__ import annotations

import tomllib
from pathlib import Path

import click
import dagster as dg
import yaml

from assets.stage import STAGE_INPUTS, code_version, stage_modules
from assets.triplets import TRIPLETS_CODE_MODULES
from core.versioning import FIRST_PARTY, module_closure, source_version
from orchestration.cli.main import main
from orchestration.definitions import defs
from orchestration.evaluation_assets import EVALUATION_CODE_MODULES
from orchestration.synthetic_assets import SYNTHETIC_ASSETS, SYNTHETIC_CODE_MODULES
from orchestration.training_assets import FEATURES_CODE_MODULES, MODEL_CODE_MODULES
from tests.conftest import REPO

# Every asset → the entry modules of its code version.
CODE_MODULES = {
    **{stage: stage_modules(stage) for stage in STAGE_INPUTS},
    "triplets": TRIPLETS_CODE_MODULES,
    "features": FEATURES_CODE_MODULES,
    "model": MODEL_CODE_MODULES,
    "evaluation": EVALUATION_CODE_MODULES,
    **{asset.key.to_user_string(): SYNTHETIC_CODE_MODULES for asset in SYNTHETIC_ASSETS},
}
# dvc.yaml's stages → the assets their command materialises.
DVC_STAGE_ASSETS = {
    "synthetic": [asset.key.to_user_string() for asset in SYNTHETIC_ASSETS],
    "dataset": [*STAGE_INPUTS, "triplets"],
    "features": ["features"],
    "train": ["model"],
    "evaluate": ["evaluation"],
}


def command_modules(command: str) -> list[str]:
    """The modules a `cameo ...` command line runs: the console script's, and the one defining
    the command's function (the CLI imports the rest of what a command runs inside it)."""
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    program, *words = command.split()
    entry = scripts[program].partition(":")[0]
    found: click.Command = main
    for word in words:
        if not isinstance(found, click.Group) or word.startswith("-"):
            break
        found = found.get_command(click.Context(found), word)
    return [entry, found.callback.__module__]


def test_asset_code_versions_and_stage_records_digest_what_their_entry_modules_import():
    graph = defs.resolve_asset_graph()
    assert {key.to_user_string() for key in graph.get_all_asset_keys()} == set(CODE_MODULES)
    for name, modules in CODE_MODULES.items():
        assert graph.get(dg.AssetKey(name)).code_version == source_version(*modules), name
    for stage in STAGE_INPUTS:  # what a stage's record says it was built by
        assert code_version(stage) == graph.get(dg.AssetKey(stage)).code_version, stage


def stage_code(stage: dict, name: str) -> list[Path]:
    """The source files a dvc.yaml stage's process loads: its command's and its assets'."""
    entries = command_modules(stage["cmd"])
    entries += [m for asset in DVC_STAGE_ASSETS[name] for m in CODE_MODULES[asset]]
    return module_closure(*entries, root=REPO)


def test_every_stage_depends_on_the_code_its_command_runs():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert set(stages) == set(DVC_STAGE_ASSETS)
    for name, stage in stages.items():
        loaded = stage_code(stage, name)
        deps = [REPO / str(dep) for dep in stage["deps"]]
        missing = {
            path.relative_to(REPO).as_posix()
            for path in loaded
            if not any(path.is_relative_to(dep) for dep in deps)
        }
        assert not missing, f"dvc.yaml stage {name} runs {sorted(missing)}: add them to its deps"
        # And no code dep the process never loads: a change there would rerun the stage.
        unused = [
            dep.relative_to(REPO).as_posix()
            for dep in deps
            if dep.relative_to(REPO).parts[0] in FIRST_PARTY
            and not any(path.is_relative_to(dep) for path in loaded)
        ]
        assert not unused, f"dvc.yaml stage {name} depends on {unused}, which it never loads"


def test_the_dataset_build_loads_no_training_or_serving_code():
    """`cameo dataset build` reads params.yaml's training and serving sections' schema, and
    nothing else of those packages: a training change leaves DVC's dataset stage current."""
    stage = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["dataset"]
    loaded = {
        path.relative_to(REPO).as_posix()
        for path in stage_code(stage, "dataset")
        if path.relative_to(REPO).parts[0] in ("training", "serving")
    }
    assert loaded == {
        "training/__init__.py",
        "training/params.py",
        "serving/__init__.py",
        "serving/params.py",
    }
    assert not {"training", "serving"} & set(stage["deps"])
