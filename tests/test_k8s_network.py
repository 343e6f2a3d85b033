"""Who may open a connection to what: the NetworkPolicies of the rendered overlays, read with
Kubernetes' ingress semantics, allow each path the system needs and refuse the others.

No network plugin runs here to enforce them; what is tested is every step up to it: the
policies as `kubectl kustomize` renders them, the pods' labels as the rendered workloads (ours),
dagster-k8s (run and step pods) and Dagster's Helm chart (its Deployments) set them, and the
policy semantics of the Kubernetes documentation (a pod selected by no ingress policy is open;
one selected by any is reached only through their rules; a bare podSelector peer means the
policy's own namespace)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

import pytest
from dagster_k8s.utils import get_common_labels

from tests.test_k8s import rendered, requires_kubectl

pytestmark = requires_kubectl
NAMESPACE = "cameo"


@dataclass(frozen=True)
class Pod:
    labels: dict[str, str]
    namespace: str = NAMESPACE
    ip: str = "10.1.2.3"


@dataclass
class Cluster:
    policies: list[dict[str, Any]]
    namespace_labels: dict[str, dict[str, str]] = field(default_factory=dict)

    def namespace(self, name: str) -> dict[str, str]:
        # Kubernetes labels every namespace with its name.
        return {"kubernetes.io/metadata.name": name, **self.namespace_labels.get(name, {})}


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A label selector: every matchLabels pair and every matchExpression hold ({} selects all)."""
    if any(labels.get(key) != value for key, value in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values")
        holds = {
            "In": key in labels and labels[key] in values,
            "NotIn": key not in labels or labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[operator]
        if not holds:
            return False
    return True


def peer_admits(peer: dict[str, Any], policy_namespace: str, source: Pod, cluster: Cluster) -> bool:
    if "ipBlock" in peer:
        address = ipaddress.ip_address(source.ip)
        block = peer["ipBlock"]
        return address in ipaddress.ip_network(block["cidr"]) and not any(
            address in ipaddress.ip_network(cidr) for cidr in block.get("except", [])
        )
    if "namespaceSelector" in peer:
        in_namespace = selects(peer["namespaceSelector"], cluster.namespace(source.namespace))
    else:
        in_namespace = source.namespace == policy_namespace
    return in_namespace and selects(peer.get("podSelector", {}), source.labels)


def admits(cluster: Cluster, source: Pod, target: Pod, port: int) -> bool:
    """Whether a TCP connection from `source` to `port` of `target` is let in."""
    selecting = [
        policy
        for policy in cluster.policies
        if policy["metadata"]["namespace"] == target.namespace
        and "Ingress" in policy["spec"].get("policyTypes", ["Ingress"])
        and selects(policy["spec"]["podSelector"], target.labels)
    ]
    if not selecting:
        return True
    for policy in selecting:
        for rule in policy["spec"].get("ingress", []):
            ports = rule.get("ports")
            port_ok = ports is None or any(
                p.get("protocol", "TCP") == "TCP" and p.get("port") in (None, port) for p in ports
            )
            peers = rule.get("from")
            namespace = policy["metadata"]["namespace"]
            peer_ok = peers is None or any(
                peer_admits(p, namespace, source, cluster) for p in peers
            )
            if port_ok and peer_ok:
                return True
    return False


def template_labels(overlay: str, kind: str, name: str | None = None) -> dict[str, str]:
    (workload,) = (
        o for o in rendered(overlay) if o["kind"] == kind and name in (None, o["metadata"]["name"])
    )
    return workload["spec"]["template"]["metadata"]["labels"]


def dagster_pod(component: str) -> dict[str, str]:
    """A run or step pod as dagster-k8s labels it."""
    return {**get_common_labels(), "app.kubernetes.io/component": component}


def chart_pod(component: str) -> dict[str, str]:
    """A pod of Dagster's Helm chart (release `dagster`): its selector labels and component."""
    name = "dagster-user-deployments" if component == "user-deployments" else "dagster"
    return {"app.kubernetes.io/name": name, "app.kubernetes.io/instance": "dagster",
            "component": component}  # fmt: skip


@pytest.fixture(scope="module")
def pods() -> dict[str, Pod]:
    return {
        "mlflow": Pod(template_labels("mlflow", "Deployment")),
        "serving": Pod(template_labels("serving", "Deployment")),
        "studio": Pod(template_labels("studio", "Deployment", "cameo-studio")),
        "training": Pod(template_labels("training", "Job")),
        "training node": Pod(template_labels("training-multinode", "Job")),
        "weights": Pod(template_labels("weights", "Job")),
        "dagster run": Pod(dagster_pod("run_worker")),
        "dagster step": Pod(dagster_pod("step_worker")),
        "dagster webserver": Pod(chart_pod("dagster-webserver")),
        "dagster daemon": Pod(chart_pod("dagster-daemon")),
        "dagster code": Pod(chart_pod("user-deployments")),
        "postgres": Pod({"app.kubernetes.io/name": "postgres"}),
        "ingress controller": Pod({"app.kubernetes.io/name": "ingress-nginx"}, "ingress-nginx"),
        "any pod of the namespace": Pod({"run": "debug"}),
        # Another namespace's pod wearing our training label: a bare podSelector peer means
        # the policy's own namespace, so the label alone opens nothing.
        "training label elsewhere": Pod(template_labels("training", "Job"), "default"),
    }


@pytest.fixture(scope="module")
def cluster() -> Cluster:
    policies = [
        obj
        for overlay in ("base", "studio")  # the studio's overlay holds serving's
        for obj in rendered(overlay)
        if obj["kind"] == "NetworkPolicy"
    ]
    return Cluster(policies)


# (to, port): who may connect; every other pod above must be refused.
ALLOWED = {
    ("mlflow", 5000): {"training", "training node", "weights", "serving", "dagster run",
                       "dagster step"},
    ("serving", 8080): {"ingress controller", "studio"},
    ("studio", 7860): {"ingress controller"},
    ("dagster webserver", 80): {"ingress controller"},
    ("dagster code", 3030): {"dagster webserver", "dagster daemon", "dagster run"},
    ("postgres", 5432): {"mlflow", "dagster webserver", "dagster daemon", "dagster code",
                         "dagster run", "dagster step"},
    # torchrun's rendezvous and a port the collectives picked at run time.
    ("training node", 29500): {"training node", "training"},
    ("training node", 41234): {"training node", "training"},
    ("weights", 8080): set(),
    ("dagster run", 8080): set(),
}  # fmt: skip


@pytest.mark.parametrize(("target", "port"), list(ALLOWED), ids=lambda v: str(v))
def test_each_path_is_allowed_to_whom_needs_it_and_refused_to_the_rest(
    cluster: Cluster, pods: dict[str, Pod], target: str, port: int
):
    # A source named like the target is another pod of its kind (a second training node).
    admitted = {
        name for name, source in pods.items() if admits(cluster, source, pods[target], port)
    }
    assert admitted == ALLOWED[(target, port)]


def test_a_needed_path_on_another_port_is_refused(cluster: Cluster, pods: dict[str, Pod]):
    assert not admits(cluster, pods["training"], pods["mlflow"], 22)
    assert not admits(cluster, pods["ingress controller"], pods["serving"], 5000)
    assert not admits(cluster, pods["mlflow"], pods["postgres"], 5000)


def test_every_pod_of_the_namespace_is_isolated(cluster: Cluster, pods: dict[str, Pod]):
    """Default deny: a pod that no other policy names (a debug pod) takes no connection."""
    stranger = Pod({"run": "debug"})
    assert not any(admits(cluster, source, stranger, 8080) for source in pods.values())


def test_the_semantics_read_here_open_a_pod_no_policy_selects():
    """The evaluator itself: without policies everything is open; a rule with no `from` admits
    every source; an ipBlock admits its CIDR but not its exceptions."""
    open_cluster = Cluster([])
    assert admits(open_cluster, Pod({}), Pod({}), 1)
    policy = {
        "metadata": {"namespace": NAMESPACE},
        "spec": {
            "podSelector": {"matchLabels": {"app": "x"}},
            "ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.9.0.0/16"]}}]}],
        },
    }
    cluster = Cluster([policy])
    target = Pod({"app": "x"})
    assert admits(cluster, Pod({}, ip="10.1.0.1"), target, 80)
    assert not admits(cluster, Pod({}, ip="10.9.0.1"), target, 80)
    assert not admits(cluster, Pod({}, ip="192.168.0.1"), target, 80)
    assert admits(cluster, Pod({}), Pod({"app": "y"}), 80)
