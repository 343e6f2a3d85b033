"""Kubernetes manifests validate against the official schemas; Helm values match the code."""

from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from orchestration.definitions import executor_for
from tests.conftest import REPO

K8S = REPO / "k8s"
KUBERNETES_VERSION = "1.31.0"


def kustomize_resources(folder: Path) -> list[Path]:
    kustomization = yaml.safe_load((folder / "kustomization.yaml").read_text())
    return [folder / name for name in kustomization["resources"]]


@pytest.mark.parametrize("manifest", kustomize_resources(K8S / "base"), ids=lambda p: p.name)
def test_base_manifests_are_valid(manifest: Path):
    for document in yaml.safe_load_all(manifest.read_text()):
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def test_dagster_values_run_the_code_location_on_kubernetes():
    values = yaml.safe_load((K8S / "dagster" / "values.yaml").read_text())
    deployment = values["dagster-user-deployments"]["deployments"][0]
    assert deployment["dagsterApiGrpcArgs"] == ["-m", "orchestration.definitions"]
    env = {e["name"]: e["value"] for e in deployment["env"]}
    assert env["CAMEO_ENV"] == "k8s"
    mounts = {m["mountPath"] for m in deployment["volumeMounts"]}
    assert {env["CAMEO_DATA"], env["CAMEO_MODELS"]} <= mounts
    claims = {v["persistentVolumeClaim"]["claimName"] for v in deployment["volumes"]}
    base_claims = {
        yaml.safe_load(p.read_text())["metadata"]["name"]
        for p in kustomize_resources(K8S / "base")
        if "pvc" in p.name
    }
    assert claims == base_claims
    assert executor_for(env["CAMEO_ENV"]).name == "k8s"
    with pytest.raises(ValueError, match="CAMEO_ENV"):
        executor_for("cloud")
