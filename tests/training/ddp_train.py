"""Run under torchrun by the two-process tests: train a few steps with the tiny params and
the JSON overrides of argv[2], then each rank writes its step, a digest of its trainable
weights (DDP must keep them identical) and the size of its validation shard.

With `"resume_after": N` among the overrides it trains twice: straight through (into
`straight/`), then stopped after N steps and resumed (into `checkpoints/`); the line ends with
the straight run's digest."""

import hashlib
import json
import sys
from pathlib import Path

import torch

from orchestration.params import load_params
from training.loop import train
from training.model import trainable_parameters

out = Path(sys.argv[1])
overrides = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {}
torch.set_num_threads(1)
params = load_params(Path(__file__).resolve().parents[2] / "params.yaml", "tiny").training
resume_after = overrides.pop("resume_after", None)
params = params.updated(
    "training",
    **{"output_dir": str(out / "checkpoints"), "max_steps": 2, "validate_every": 100, **overrides},
)


def weights_digest(result) -> str:
    digest = hashlib.sha256()
    trainable = trainable_parameters(result.model.unet, result.model.controlnet)
    for name, param in sorted(trainable.items()):
        digest.update(name.encode())
        digest.update(param.detach().cpu().float().numpy().tobytes())
    return digest.hexdigest()


straight = ""
if resume_after is not None:
    straight_params = params.updated("training", output_dir=str(out / "straight"))
    straight = weights_digest(train(straight_params, lock_file=None, show_progress=False))
    train(params, lock_file=None, show_progress=False, stop_after=resume_after)
result = train(params, lock_file=None, show_progress=False, resume=resume_after is not None)
line = f"{result.step} {weights_digest(result)} {result.validation_shard} {straight}\n"
(out / f"rank{result.rank}.txt").write_text(line)
torch.distributed.destroy_process_group()
