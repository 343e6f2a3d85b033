"""dvc.yaml's deps cannot drift from the code: each stage lists every first-party package that
its command loads, so `dvc repro` reruns a stage whenever code it runs has changed."""

from __future__ import annotations

import json
import subprocess
import sys

import yaml

from tests.conftest import REPO

FIRST_PARTY = ("core", "perception", "assets", "training", "serving", "orchestration")
# A stage's command → the modules that command runs: its click module, and what that module
# imports when the command runs (the CLI imports its heavy parts lazily).
CLI = ["orchestration.cli.main", "orchestration.params"]
ENTRY_POINTS = {
    "cameo dataset build": [*CLI, "orchestration.cli.dataset", "orchestration.definitions"],
    # `cameo materialize` runs the training assets, which run `cameo features build` and
    # `cameo train` as their own processes.
    "cameo materialize": [
        *CLI,
        "orchestration.cli.materialize",
        "orchestration.definitions",
        "orchestration.cli.features",
        "orchestration.cli.train",
        "training.loop",
        "serving.registry",
    ],
}


def loaded_packages(modules: list[str]) -> set[str]:
    """The first-party top-level packages that importing `modules` loads, in a fresh process."""
    code = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "top = {n.split('.')[0] for n in sys.modules}\n"
        f"print(json.dumps(sorted(top & set({FIRST_PARTY!r}))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    return set(json.loads(result.stdout.splitlines()[-1]))


def test_every_stage_depends_on_the_packages_its_command_runs():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        (command,) = [c for c in ENTRY_POINTS if stage["cmd"].startswith(c)]
        deps = {str(dep) for dep in stage["deps"]}
        missing = loaded_packages(ENTRY_POINTS[command]) - deps
        assert not missing, f"dvc.yaml stage {name} runs code from {sorted(missing)}: add them"
