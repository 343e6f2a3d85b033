"""The multi-node training Job's own command trains: the exact torchrun line the Indexed Job
renders, with the variables Kubernetes fills in filled in here, run as 2 "nodes" × 1 process
on this machine over gloo (no cluster can run here; the rendezvous host, pod 0, is 127.0.0.1)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_training_train import REPO, _env

from orchestration.cli.train import train_command
from orchestration.kubernetes import render_training_job
from orchestration.params import load_params
from serving.server import free_port
from tests.conftest import tracking_store
from training.checkpoint import checkpoints
from training.outputs import RUN_FILE, STATE_FILE

NODES = 2


def node_command(container: dict, env: dict[str, str]) -> list[str]:
    """The container's command line as the kubelet runs it: `$(VAR)` from the environment."""
    return [
        re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], arg)
        for arg in container["command"] + container["args"]
    ]


@pytest.mark.slow
def test_indexed_job_torchrun_line_trains_on_two_nodes(triplets_root, tmp_path):
    k8s = load_params(REPO / "params.yaml", "full").kubernetes
    k8s = k8s.updated("kubernetes", nodes=NODES, gpus_per_node=1)
    name = "cameo-train-test"
    service, job = render_training_job(k8s, ["--steps", "2", "--no-register"], name=name)
    (train,) = job["spec"]["template"]["spec"]["containers"]
    assert train["command"] == ["torchrun"]

    port = free_port()
    pod_env = {e["name"]: e["value"] for e in train["env"] if "value" in e}
    processes = []
    for index in range(NODES):
        env = {
            **_env(triplets_root, tmp_path),
            **pod_env,
            # What the cluster provides: the Job's name and the pod's index (Indexed Job).
            "JOB_NAME": name,
            "JOB_COMPLETION_INDEX": str(index),
            # This machine's stand-ins for the pod's volumes and the tiny profile.
            "CAMEO_PROFILE": "tiny",
            "CAMEO_PARAMS": str(REPO / "params.yaml"),
            "CAMEO_DATA": str(triplets_root),
            "CAMEO_CHECKPOINTS": str(tmp_path / "checkpoints"),
            "MLFLOW_TRACKING_URI": tracking_store(tmp_path),
            "HOME": str(tmp_path),
        }
        command = node_command(train, env)
        endpoint = command.index("--rdzv-endpoint") + 1
        # Pod 0's DNS name (<job>-0.<headless service>) is this machine.
        assert command[endpoint] == f"{name}-0.{service['metadata']['name']}:29500"
        command[endpoint] = f"127.0.0.1:{port}"
        command[0] = str(Path(sys.executable).parent / "torchrun")
        processes.append(
            subprocess.Popen(
                command, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
            )
        )
    outputs = [p.communicate(timeout=300)[0].decode() for p in processes]
    for index, process in enumerate(processes):
        assert process.returncode == 0, f"node {index}:\n{outputs[index]}"

    output_dir = tmp_path / "checkpoints" / name
    (checkpoint,) = checkpoints(output_dir)
    state = torch.load(checkpoint / STATE_FILE, map_location="cpu", weights_only=False)
    assert (state["step"], state["world_size"]) == (2, NODES)  # one process on each "node"
    assert (output_dir / "final" / "cameo_checkpoint.json").is_file()
    assert (output_dir / RUN_FILE).is_file()
    assert sum("MLflow run " in output for output in outputs) == 1  # rank 0 alone logs


def test_check_passes_or_names_the_problem_before_any_work(triplets_root, capsys):
    """The training Job's `check` init container: exit 0 when training can start, else exit
    with the reason (the Job's podFailurePolicy then fails it without retrying)."""
    with pytest.raises(SystemExit) as ok:
        train_command.main(
            ["--check", "--unlocked", "--data", str(triplets_root), "--profile", "tiny"]
        )
    assert ok.value.code == 0
    assert "ready to train on dataset" in capsys.readouterr().out
    with pytest.raises(SystemExit) as missing:
        train_command.main(
            ["--check", "--unlocked", "--data", str(triplets_root), "--profile", "full"]
        )
    assert "the sdxl config loads pretrained weights" in str(missing.value.code)
    with pytest.raises(SystemExit) as absent:
        train_command.main(
            ["--check", "--unlocked", "--data", str(triplets_root), "--profile", "full",
             "--models", str(triplets_root / "no-models")]
        )  # fmt: skip
    assert "`cameo weights download --for train` downloads it" in str(absent.value.code)
    with pytest.raises(SystemExit) as unversioned:
        train_command.main(["--check", "--data", str(triplets_root), "--profile", "tiny"])
    assert "does not version" in str(unversioned.value.code)
