"""Run under torchrun by the two-process tests: train a few steps with the tiny params and
the JSON overrides of argv[2], then each rank writes its step, a digest of its trainable
weights (DDP must keep them identical) and the size of its validation shard."""

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
params = params.updated(
    "training",
    **{"output_dir": str(out / "checkpoints"), "max_steps": 2, "validate_every": 100, **overrides},
)
result = train(params, lock_file=None, show_progress=False)
digest = hashlib.sha256()
for name, param in sorted(trainable_parameters(result.model.unet, result.model.controlnet).items()):
    digest.update(name.encode())
    digest.update(param.detach().cpu().numpy().tobytes())
line = f"{result.step} {digest.hexdigest()} {result.validation_shard}\n"
(out / f"rank{result.rank}.txt").write_text(line)
torch.distributed.destroy_process_group()
