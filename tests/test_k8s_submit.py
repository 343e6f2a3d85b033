"""Submitting training to Kubernetes: `submit_training` (what `cameo train --submit k8s` runs)
and the Dagster `model` asset under CAMEO_ENV=k8s create the Job, follow its pods' logs and
status, and report the MLflow run, or the failed pod's reason.

No Kubernetes cluster can run here, so the API server is a local stand-in: a real HTTP server
on 127.0.0.1 answering the few endpoints the official `kubernetes` client calls (ConfigMap
replace/create, Service create/patch, Job create and status, Pod list and log). The client is
configured through a kubeconfig file, as on a workstation; everything from the rendered Job to
the HTTP requests is the real code path.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import dagster as dg
import pytest
import yaml

from orchestration.dataset_definitions import STAGES, build_resources
from orchestration.kubernetes import (
    JOB_NAME_LABEL,
    KubernetesParams,
    TrainingJobFailed,
    image_reference,
    submit_training,
)
from orchestration.params import load_params
from orchestration.training_assets import model
from tests.conftest import PARAMS

RUN_ID = "0123456789abcdef0123456789abcdef"
CONFIG_ERROR = "error: training parameters: training.max_steps: must be >= 1, got 0"


@dataclass
class StandInCluster:
    """The objects the client created, and how their pods end: `succeed` (logs with the MLflow
    run) or `fail` (the `check` init container exits 1, the Job fails by its podFailurePolicy)."""

    outcome: str = "succeed"
    requests: list[tuple[str, str]] = field(default_factory=list)
    configmaps: dict[str, dict] = field(default_factory=dict)
    services: dict[str, dict] = field(default_factory=dict)
    jobs: dict[str, dict] = field(default_factory=dict)

    def pods(self, job_name: str) -> list[dict[str, Any]]:
        job = self.jobs[job_name]
        count = job["spec"].get("completions", 1)
        return [self._pod(job, index) for index in range(count)]

    def _pod(self, job: dict[str, Any], index: int) -> dict[str, Any]:
        name = job["metadata"]["name"]
        spec = job["spec"]["template"]["spec"]

        def status(container: dict, state: dict) -> dict:
            return {
                "name": container["name"],
                "image": container["image"],
                "imageID": "",
                "ready": False,
                "restartCount": 0,
                "state": state,
            }

        (check,), (train,) = spec["initContainers"], spec["containers"]
        if self.outcome == "succeed":
            done = {"terminated": {"exitCode": 0, "reason": "Completed"}}
            init, main, phase = [status(check, done)], [status(train, done)], "Succeeded"
        else:
            failed = {"terminated": {"exitCode": 1, "reason": "Error", "message": CONFIG_ERROR}}
            waiting = {"waiting": {"reason": "PodInitializing"}}
            init, main, phase = [status(check, failed)], [status(train, waiting)], "Failed"
        return {
            "metadata": {
                "name": f"{name}-{index}-x7k2p",
                "namespace": job["metadata"]["namespace"],
                "labels": {JOB_NAME_LABEL: name},
            },
            "spec": {"containers": [{"name": "train"}]},
            "status": {
                "phase": phase,
                "initContainerStatuses": init,
                "containerStatuses": main,
            },
        }

    def job_status(self, name: str) -> dict[str, Any]:
        job = self.jobs[name]
        if self.outcome == "succeed":
            condition = {"type": "Complete", "status": "True"}
        else:
            condition = {
                "type": "Failed",
                "status": "True",
                "reason": "PodFailurePolicy",
                "message": f"Container check for pod cameo/{name}-0-x7k2p failed with exit "
                "code 1 matching FailJob rule at index 0",
            }
        return {**job, "status": {"conditions": [condition]}}

    def log(self, pod: str) -> str:
        return f"rank 0 on {pod}\nMLflow run {RUN_ID}\ntrain: 100%|##########| 2/2\n"


class Handler(BaseHTTPRequestHandler):
    cluster: StandInCluster

    def log_message(self, format: str, *args: Any) -> None:  # keep pytest's output clean
        pass

    def _send(self, code: int, body: dict | str) -> None:
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        self.send_response(code)
        self.send_header(
            "Content-Type", "text/plain" if isinstance(body, str) else "application/json"
        )
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> dict[str, Any]:
        return json.loads(self.rfile.read(int(self.headers["Content-Length"])))

    def _not_found(self) -> None:
        self._send(404, {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 404})

    def _route(self, method: str) -> None:
        url = urlparse(self.path)
        parts = url.path.strip("/").split("/")
        self.cluster.requests.append((method, url.path))
        cluster = self.cluster
        match method, parts:
            case "PUT", ["api", "v1", "namespaces", _, "configmaps", name]:
                if name not in cluster.configmaps:
                    return self._not_found()
                cluster.configmaps[name] = self._body()
                return self._send(200, cluster.configmaps[name])
            case "POST", ["api", "v1", "namespaces", _, "configmaps"]:
                body = self._body()
                cluster.configmaps[body["metadata"]["name"]] = body
                return self._send(201, body)
            case "POST", ["api", "v1", "namespaces", _, "services"]:
                body = self._body()
                cluster.services[body["metadata"]["name"]] = body
                return self._send(201, body)
            case "PATCH", ["api", "v1", "namespaces", _, "services", name]:
                cluster.services[name]["metadata"].update(self._body()["metadata"])
                return self._send(200, cluster.services[name])
            case "POST", ["apis", "batch", "v1", "namespaces", _, "jobs"]:
                body = self._body()
                body["metadata"]["uid"] = "5d7c6a52-0000-4000-8000-000000000001"
                cluster.jobs[body["metadata"]["name"]] = body
                return self._send(201, body)
            case "GET", ["apis", "batch", "v1", "namespaces", _, "jobs", name, "status"]:
                return self._send(200, cluster.job_status(name))
            case "GET", ["api", "v1", "namespaces", _, "pods"]:
                selector = parse_qs(url.query)["labelSelector"][0]
                job_name = selector.removeprefix(f"{JOB_NAME_LABEL}=")
                return self._send(200, {"kind": "PodList", "items": cluster.pods(job_name)})
            case "GET", ["api", "v1", "namespaces", _, "pods", pod, "log"]:
                assert parse_qs(url.query)["container"] == ["train"]
                return self._send(200, cluster.log(pod))
        self._not_found()

    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")

    def do_PUT(self) -> None:
        self._route("PUT")

    def do_PATCH(self) -> None:
        self._route("PATCH")


@pytest.fixture
def cluster(tmp_path, monkeypatch) -> Iterator[StandInCluster]:
    """The stand-in API server, and a kubeconfig naming it ($KUBECONFIG)."""
    state = StandInCluster()
    handler = type("StandInHandler", (Handler,), {"cluster": state})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "stand-in", "cluster": {"server": f"http://127.0.0.1:{server.server_port}"}}
        ],
        "users": [{"name": "tester", "user": {"token": "not-a-secret"}}],
        "contexts": [{"name": "stand-in", "context": {"cluster": "stand-in", "user": "tester"}}],
        "current-context": "stand-in",
    }
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(kubeconfig))
    monkeypatch.setenv("KUBECONFIG", str(path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)  # not in a pod
    yield state
    server.shutdown()
    server.server_close()


def params_with_nodes(tmp_path: Path, nodes: int) -> tuple[Path, KubernetesParams]:
    values = yaml.safe_load(PARAMS.read_text())
    values["kubernetes"]["nodes"] = nodes
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(values))
    return path, load_params(path, "full").kubernetes


def test_one_node_job_is_created_followed_and_reports_its_run(cluster, tmp_path):
    params_file, values = params_with_nodes(tmp_path, 1)
    lines: list[str] = []
    job = submit_training(params_file, values, ["--steps", "2"], log=lines.append, poll_seconds=0)

    assert job.run_id == RUN_ID
    assert job.output_dir == f"/checkpoints/{job.name}"
    assert cluster.configmaps["cameo-params"]["data"] == {"params.yaml": params_file.read_text()}
    created = cluster.jobs[job.name]
    (train,) = created["spec"]["template"]["spec"]["containers"]
    assert train["image"] == image_reference()
    assert train["args"][-2:] == ["--steps", "2"]
    assert "completionMode" not in created["spec"] and not cluster.services
    assert f"[{job.name}-0-x7k2p] MLflow run {RUN_ID}" in lines
    assert lines[-1] == f"job cameo/{job.name} complete: MLflow run {RUN_ID}"
    # The params ConfigMap did not exist: replace answered 404, then it was created.
    assert [m for m, p in cluster.requests if p.endswith("configmaps/cameo-params")] == ["PUT"]


def test_multinode_job_gets_its_headless_service_owned_by_the_job(cluster, tmp_path):
    params_file, values = params_with_nodes(tmp_path, 3)
    job = submit_training(params_file, values, log=lambda line: None, poll_seconds=0)

    created = cluster.jobs[job.name]
    assert created["spec"]["completions"] == created["spec"]["parallelism"] == 3
    service = cluster.services[job.name]
    assert service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"] == {JOB_NAME_LABEL: job.name}
    (owner,) = service["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"]) == (
        "Job",
        job.name,
        created["metadata"]["uid"],
    )
    # The Service exists before the Job, so pod 0's name resolves when the rendezvous starts.
    posts = [p for m, p in cluster.requests if m == "POST"]
    assert posts.index("/api/v1/namespaces/cameo/services") < posts.index(
        "/apis/batch/v1/namespaces/cameo/jobs"
    )
    assert job.run_id == RUN_ID


def test_failed_pod_reason_is_raised(cluster, tmp_path):
    cluster.outcome = "fail"
    params_file, values = params_with_nodes(tmp_path, 1)
    with pytest.raises(TrainingJobFailed) as failure:
        submit_training(params_file, values, log=lambda line: None, poll_seconds=0)
    message = str(failure.value)
    assert "failed: PodFailurePolicy" in message
    assert "container check: Error (exit code 1)" in message
    assert CONFIG_ERROR in message


def test_model_asset_on_kubernetes_shows_the_failed_pod_in_the_run(cluster, tmp_path, monkeypatch):
    cluster.outcome = "fail"
    monkeypatch.setenv("CAMEO_ENV", "k8s")
    params_file, _ = params_with_nodes(tmp_path, 1)
    result = dg.materialize(
        [*STAGES, model],
        selection=[model],
        instance=dg.DagsterInstance.ephemeral(),
        resources=build_resources(str(tmp_path / "data"), str(params_file), "tiny"),
        raise_on_error=False,
    )
    assert not result.success
    (failure,) = [e for e in result.all_events if e.is_step_failure]
    description = failure.event_specific_data.user_failure_data.description
    assert "PodFailurePolicy" in description and CONFIG_ERROR in description
    (job,) = cluster.jobs.values()
    (check,) = job["spec"]["template"]["spec"]["initContainers"]
    data = str(tmp_path / "data")
    assert check["args"][-6:] == [
        "--profile",
        "tiny",
        "--data",
        data,
        "--unlocked",
        "--no-progress",
    ]
