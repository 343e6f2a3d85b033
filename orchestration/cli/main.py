"""`cameo`: the command group, with every command module's commands registered on it.

Commands import their heavy dependencies (Dagster, torch, MLflow) when they run, so that
`cameo --help` starts fast.
"""

from __future__ import annotations

import click

from orchestration.cli import (
    dataset,
    evaluate,
    features,
    lineage,
    materialize,
    model,
    serve,
    train,
    weights,
)
from orchestration.environment import configure_local_environment


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """cameo: identity-consistent character inpainting, from movies to a served model."""
    configure_local_environment()


main.add_command(dataset.sample_movie)
main.add_command(dataset.dataset)
main.add_command(features.features)
main.add_command(materialize.materialize_command)
main.add_command(train.train_command)
main.add_command(train.relog_command)
main.add_command(model.model)
main.add_command(weights.weights)
main.add_command(serve.serve)
main.add_command(serve.inpaint)
main.add_command(serve.serve_check)
main.add_command(evaluate.evaluate)
main.add_command(lineage.lineage)


if __name__ == "__main__":
    main()
