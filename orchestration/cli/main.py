"""`cameo`: the command group. Each command's module is imported when the command runs (or
when `--help` lists it), so that a command loads only its own code: `cameo dataset build`
imports neither the training nor the serving code, and a change there leaves DVC's dataset
stage current (dvc.yaml's deps, kept true by tests/test_dvc_deps.py).

Commands import their heavy dependencies (Dagster, torch, MLflow) when they run, so that
`cameo --help` starts fast.
"""

from __future__ import annotations

import importlib

import click

from orchestration.environment import configure_local_environment

# Command name -> "module:attribute" of its click command, in `--help`'s order.
COMMANDS = {
    "sample-movie": "orchestration.cli.dataset:sample_movie",
    "dataset": "orchestration.cli.dataset:dataset",
    "synthetic": "orchestration.cli.synthetic:synthetic",
    "features": "orchestration.cli.features:features",
    "materialize": "orchestration.cli.materialize:materialize_command",
    "train": "orchestration.cli.train:train_command",
    "relog": "orchestration.cli.train:relog_command",
    "model": "orchestration.cli.model:model",
    "weights": "orchestration.cli.weights:weights",
    "serve": "orchestration.cli.serve:serve",
    "inpaint": "orchestration.cli.serve:inpaint",
    "serve-check": "orchestration.cli.serve:serve_check",
    "studio": "orchestration.cli.studio:studio",
    "evaluate": "orchestration.cli.evaluate:evaluate",
    "identity": "orchestration.cli.identity:identity",
    "lineage": "orchestration.cli.lineage:lineage",
}


class LazyGroup(click.Group):
    """A group whose commands are imported by name when first asked for (click's documented
    pattern for lazily loaded subcommands)."""

    def __init__(self, *args, lazy_commands: dict[str, str], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.lazy_commands = lazy_commands

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.lazy_commands)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.lazy_commands:
            return None  # click then says "No such command" with the known ones
        module, _, attribute = self.lazy_commands[cmd_name].partition(":")
        command = getattr(importlib.import_module(module), attribute)
        if not isinstance(command, click.Command):
            raise TypeError(f"{self.lazy_commands[cmd_name]} is not a click command")
        return command


@click.group(
    cls=LazyGroup,
    lazy_commands=COMMANDS,
    context_settings={"help_option_names": ["-h", "--help"]},
)
def main() -> None:
    """cameo: identity-consistent character inpainting, from movies to a served model."""
    configure_local_environment()


if __name__ == "__main__":
    main()
