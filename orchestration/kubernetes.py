"""Training on Kubernetes: the Job rendered from params.yaml, submitted and followed to its end.

`cameo train --submit k8s` and the Dagster `model` asset under CAMEO_ENV=k8s call
`submit_and_follow`. The Job is k8s/training/job.yaml (`kubernetes.nodes: 1`) or the Indexed
Job and headless Service of k8s/training-multinode (N > 1), filled in from params.yaml's
`kubernetes` section, with the image that k8s/components/image names: `kubectl apply -k` and
the submission run the same pods (a test renders both and compares them).
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field

from core.params import Section

K8S = Path(__file__).resolve().parents[1] / "k8s"
IMAGE_COMPONENT = K8S / "components" / "image" / "kustomization.yaml"
ONE_NODE = K8S / "training"
MULTI_NODE = K8S / "training-multinode"
PARAMS_CONFIGMAP = "cameo-params"
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
PART_OF = {"app.kubernetes.io/part-of": "cameo"}  # what the kustomizations label everything with
RUN_LINE = re.compile(r"MLflow run ([0-9a-f]{32})")  # printed by training.loop on rank 0


class KubernetesParams(Section):
    """The `kubernetes` section of params.yaml: the training Job's shape and resources."""

    namespace: str = "cameo"
    gpus_per_node: int = Field(8, ge=1)  # nvidia.com/gpu per pod = torchrun --nproc-per-node
    nodes: int = Field(1, ge=1)  # 1: a Job; N > 1: an Indexed Job + headless Service
    rendezvous_port: int = Field(29500, ge=1, le=65535)
    backoff_limit: int = Field(3, ge=0)
    cpu: str = "96"
    memory: str = "1000Gi"
    shm_size: str = "64Gi"
    mlflow_tracking_uri: str = "http://mlflow:5000"
    gpu_node_selector: dict[str, str] = Field(default_factory=dict)
    gpu_tolerations: list[dict[str, Any]] = Field(default_factory=list)


def image_reference(component: Path = IMAGE_COMPONENT) -> str:
    """`name:tag` of the cameo image, from the kustomize component every overlay includes."""
    images = yaml.safe_load(component.read_text())["images"]
    (image,) = (i for i in images if i["name"] == "cameo")
    tag = str(image.get("newTag", ""))
    if not tag or tag == "latest":
        raise ValueError(f"{component}: pin the cameo image to a tag (not {tag or 'none'!r})")
    return f"{image['newName']}:{tag}"


def _load(path: Path) -> dict[str, Any]:
    # A JSON round trip gives every YAML alias (the shared env and mounts) its own copy.
    return json.loads(json.dumps(yaml.safe_load(path.read_text())))


def _set_option(args: list[str], option: str, value: str) -> None:
    args[args.index(option) + 1] = value


def render_training_job(
    k8s: KubernetesParams,
    training_args: Sequence[str] = (),
    name: str | None = None,
    image: str | None = None,
) -> list[dict[str, Any]]:
    """The objects of one training run: `[Job]` for one node, `[Service, Job]` for N > 1.

    `training_args` go to `python -m orchestration.cli.train` (after the Job's own `--resume
    --unlocked --no-progress --output-dir $(CAMEO_CHECKPOINTS)/$(JOB_NAME)`); `name` defaults
    to the manifest's.
    """
    folder = ONE_NODE if k8s.nodes == 1 else MULTI_NODE
    job = _load(folder / "job.yaml")
    name = name or job["metadata"]["name"]
    image = image or image_reference()
    job["metadata"].update(name=name, namespace=k8s.namespace)
    job["metadata"]["labels"].update(PART_OF)
    job["spec"]["backoffLimit"] = k8s.backoff_limit
    pod = job["spec"]["template"]["spec"]
    pod["nodeSelector"] = dict(k8s.gpu_node_selector)
    pod["tolerations"] = [dict(t) for t in k8s.gpu_tolerations]
    for container in pod["initContainers"] + pod["containers"]:
        container["image"] = image
        for variable in container["env"]:
            if variable["name"] == "MLFLOW_TRACKING_URI":
                variable["value"] = k8s.mlflow_tracking_uri
        container["args"] += list(training_args)
    (train,) = pod["containers"]
    _set_option(train["args"], "--nnodes", str(k8s.nodes))
    _set_option(train["args"], "--nproc-per-node", str(k8s.gpus_per_node))
    resources = {"cpu": k8s.cpu, "memory": k8s.memory, "nvidia.com/gpu": k8s.gpus_per_node}
    train["resources"] = {"requests": dict(resources), "limits": dict(resources)}
    for volume in pod["volumes"]:
        if volume["name"] == "shm":
            volume["emptyDir"]["sizeLimit"] = k8s.shm_size
    if k8s.nodes == 1:
        return [job]
    job["spec"].update(completions=k8s.nodes, parallelism=k8s.nodes)
    pod["subdomain"] = name  # pod i answers at <name>-i.<name>
    endpoint = f"$(JOB_NAME)-0.{name}:{k8s.rendezvous_port}"
    _set_option(train["args"], "--rdzv-endpoint", endpoint)
    service = _load(folder / "service.yaml")
    service["metadata"].update(name=name, namespace=k8s.namespace, labels=dict(PART_OF))
    service["spec"]["selector"] = {JOB_NAME_LABEL: name}
    service["spec"]["ports"][0]["port"] = k8s.rendezvous_port
    return [service, job]


def job_name(now: datetime | None = None) -> str:
    """A new Job's name: its own checkpoints folder, so only its own restarts resume."""
    return f"cameo-train-{(now or datetime.now(UTC)):%Y%m%d-%H%M%S}"


class TrainingJobFailed(RuntimeError):
    """The training Job failed; the message names the Job's and each failed pod's reason."""


@dataclass(frozen=True)
class TrainingJob:
    name: str
    namespace: str
    run_id: str | None  # the MLflow run, from rank 0's log
    output_dir: str  # the Job's checkpoints folder, as the pods see the checkpoints claim


def _condition(job: Any, kind: str) -> Any | None:
    for condition in job.status.conditions or []:
        if condition.type == kind and condition.status == "True":
            return condition
    return None


def pod_failures(pods: Sequence[Any]) -> list[str]:
    """One line per container that ended badly: pod, container, reason, exit code, message."""
    lines = []
    for pod in pods:
        statuses = (pod.status.init_container_statuses or []) + (
            pod.status.container_statuses or []
        )
        for status in statuses:
            ended = status.state.terminated if status.state else None
            if ended is not None and ended.exit_code != 0:
                message = " ".join((ended.message or "").split())
                lines.append(
                    f"pod {pod.metadata.name} container {status.name}: {ended.reason} "
                    f"(exit code {ended.exit_code})" + (f": {message}" if message else "")
                )
        if pod.status.phase == "Failed" and pod.status.reason:  # evicted, deadline, ...
            lines.append(f"pod {pod.metadata.name}: {pod.status.reason}: {pod.status.message}")
    return lines


def _follow_log(core: Any, pod: str, namespace: str, log: Callable[[str], None], found: list):
    """Stream the `train` container's log line by line until it ends."""
    from kubernetes.client.exceptions import ApiException

    try:
        response = core.read_namespaced_pod_log(
            pod, namespace, container="train", follow=True, _preload_content=False
        )
    except ApiException as error:  # e.g. the pod was deleted meanwhile: its status tells why
        log(f"[{pod}] no log: {error.reason}")
        return
    buffered = ""
    for chunk in response.stream(4096):
        buffered += chunk.decode("utf-8", errors="replace")
        *lines, buffered = buffered.split("\n")
        for line in lines:
            log(f"[{pod}] {line}")
            if match := RUN_LINE.search(line):
                found.append(match.group(1))
    if buffered:
        log(f"[{pod}] {buffered}")
    response.release_conn()


def _train_started(pod: Any) -> bool:
    return any(
        status.name == "train"
        and status.state is not None
        and (status.state.running or status.state.terminated)
        for status in pod.status.container_statuses or []
    )


def submit_and_follow(
    objects: Sequence[dict[str, Any]],
    params_file: str | Path,
    *,
    api_client: Any | None = None,
    log: Callable[[str], None] = print,
    poll_seconds: float = 5.0,
) -> TrainingJob:
    """Create the rendered objects (the params ConfigMap replaced by `params_file` first),
    stream every training pod's log into `log`, wait for the Job to end and return it with the
    MLflow run; raise TrainingJobFailed with the failed pods' reasons.

    Without `api_client`: the in-cluster service account, else the local kubeconfig.
    """
    from kubernetes import client, config
    from kubernetes.client.exceptions import ApiException

    if api_client is None:
        try:
            config.load_incluster_config()
            api_client = client.ApiClient()
        except config.ConfigException:  # $KUBECONFIG read now: the client reads it at import
            api_client = config.new_client_from_config(os.environ.get("KUBECONFIG"))
    core, batch = client.CoreV1Api(api_client), client.BatchV1Api(api_client)
    *services, job = objects
    name, namespace = job["metadata"]["name"], job["metadata"]["namespace"]

    # The pods read params.yaml from this ConfigMap: the submitter's params, as rendered.
    configmap = {
        "metadata": {"name": PARAMS_CONFIGMAP, "namespace": namespace, "labels": dict(PART_OF)},
        "data": {"params.yaml": Path(params_file).read_text()},
    }
    try:
        core.replace_namespaced_config_map(PARAMS_CONFIGMAP, namespace, configmap)
    except ApiException as error:
        if error.status != 404:
            raise
        core.create_namespaced_config_map(namespace, configmap)
    for service in services:  # before the Job: pod 0's DNS name must exist for the rendezvous
        core.create_namespaced_service(namespace, service)
    created = batch.create_namespaced_job(namespace, job)
    owner = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "name": name,
        "uid": created.metadata.uid,
    }
    for service in services:  # deleted with the Job
        core.patch_namespaced_service(
            service["metadata"]["name"], namespace, {"metadata": {"ownerReferences": [owner]}}
        )
    log(f"created job {namespace}/{name}")

    followers: dict[str, threading.Thread] = {}
    run_ids: list[str] = []
    while True:
        status = batch.read_namespaced_job_status(name, namespace)
        pods = core.list_namespaced_pod(namespace, label_selector=f"{JOB_NAME_LABEL}={name}").items
        for pod in pods:
            if pod.metadata.name not in followers and _train_started(pod):
                follower = threading.Thread(
                    target=_follow_log,
                    args=(core, pod.metadata.name, namespace, log, run_ids),
                    daemon=True,
                )
                follower.start()
                followers[pod.metadata.name] = follower
        failed, complete = _condition(status, "Failed"), _condition(status, "Complete")
        if failed or complete:
            break
        time.sleep(poll_seconds)
    for follower in followers.values():
        follower.join(timeout=60)
    if failed:
        reasons = pod_failures(pods)
        raise TrainingJobFailed(
            f"job {namespace}/{name} failed: {failed.reason}: {failed.message}"
            + "".join(f"\n  {line}" for line in reasons)
        )
    run_id = run_ids[-1] if run_ids else None
    log(f"job {namespace}/{name} complete: MLflow run {run_id}")
    (train,) = job["spec"]["template"]["spec"]["containers"]
    checkpoints = next(e["value"] for e in train["env"] if e["name"] == "CAMEO_CHECKPOINTS")
    return TrainingJob(name, namespace, run_id, f"{checkpoints}/{name}")


def submit_training(
    params_file: str | Path,
    k8s: KubernetesParams,
    training_args: Sequence[str] = (),
    *,
    api_client: Any | None = None,
    log: Callable[[str], None] = print,
    poll_seconds: float = 5.0,
) -> TrainingJob:
    """Render a new training Job from the `kubernetes` section of `params_file` (which the pods
    then read) and follow it to its end: what `cameo train --submit k8s` and the `model` asset
    run."""
    objects = render_training_job(k8s, training_args, name=job_name())
    return submit_and_follow(
        objects, params_file, api_client=api_client, log=log, poll_seconds=poll_seconds
    )
