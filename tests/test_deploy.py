"""The deployment files: the Kubernetes manifests pass the schema of a stated Kubernetes
version (unknown fields refused), fit together, and probe the daemon's gRPC health service;
the container file copies what the build needs. (No image is built here: CI has no
container daemon.)"""

from __future__ import annotations

import re
from typing import Any

import kubernetes_validate
import pytest
import yaml
from conftest import REPO_ROOT

KUBERNETES_VERSION = "1.30.0"  # gRPC probes are GA from 1.27
DEPLOY = REPO_ROOT / "deploy"


def manifests() -> dict[str, dict[str, Any]]:
    found = {}
    for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            found[document["kind"]] = document
    return found


@pytest.mark.parametrize("kind", ["Service", "StatefulSet"])
def test_a_manifest_passes_the_kubernetes_schema(kind: str) -> None:
    kubernetes_validate.validate(manifests()[kind], KUBERNETES_VERSION, strict=True)


def test_the_schema_check_refuses_a_misspelt_field() -> None:
    broken = manifests()["StatefulSet"]
    broken["spec"]["replica"] = broken["spec"].pop("replicas")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_the_shards_are_reachable_by_name_and_probed_through_grpc_health() -> None:
    service, shards = manifests()["Service"], manifests()["StatefulSet"]
    assert service["spec"]["clusterIP"] == "None"  # headless: a stable name per shard
    assert shards["spec"]["serviceName"] == service["metadata"]["name"]
    labels = shards["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    (container,) = shards["spec"]["template"]["spec"]["containers"]
    grpc_port = next(p["containerPort"] for p in container["ports"] if p["name"] == "grpc")
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == grpc_port
    mounts = {m["name"] for m in container["volumeMounts"]}
    assert (
        "data" in mounts and shards["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    )
    assert "--auth-tokens" in container["args"]


def test_the_container_file_copies_what_exists() -> None:
    text = (DEPLOY / "Containerfile").read_text()
    for line in re.findall(r"^COPY (?!--from)(.+)$", text, re.M):
        *sources, _ = line.split()
        for source in sources:
            assert (REPO_ROOT / source).exists(), source
