"""Run under torchrun by test_torchrun_two_processes_stay_in_sync: train a few steps, then
each rank writes a digest of its trainable weights (DDP must keep them identical)."""

import hashlib
import sys
from pathlib import Path

import torch

from orchestration.params import load_params
from training.distributed import init_distributed
from training.loop import train
from training.model import trainable_parameters

out = Path(sys.argv[1])
torch.set_num_threads(1)
params = load_params(Path(__file__).resolve().parents[2] / "params.yaml", "tiny").training.updated(
    "training",
    output_dir=str(out / "checkpoints"),
    max_steps=2,
    validate_every=100,
)
result = train(params, lock_file=None, show_progress=False)
digest = hashlib.sha256()
for name, param in sorted(trainable_parameters(result.model.unet, result.model.controlnet).items()):
    digest.update(name.encode())
    digest.update(param.detach().cpu().numpy().tobytes())
rank = init_distributed().rank
(out / f"rank{rank}.txt").write_text(f"{result.step} {digest.hexdigest()}\n")
torch.distributed.destroy_process_group()
