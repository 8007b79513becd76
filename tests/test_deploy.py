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


def manifests() -> dict[tuple[str, str], dict[str, Any]]:
    """Every document of deploy/kubernetes, by kind and name."""
    found = {}
    for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            found[document["kind"], document["metadata"]["name"]] = document
    return found


SHARDS = ("StatefulSet", "engram-store")
FOLLOWERS = ("StatefulSet", "engram-store-follower")


def test_the_manifests_hold_the_shards_the_followers_and_their_services() -> None:
    assert set(manifests()) == {
        SHARDS,
        FOLLOWERS,
        ("Service", "engram-store"),
        ("Service", "engram-store-follower"),
    }


@pytest.mark.parametrize("key", sorted(manifests()), ids=lambda key: "/".join(key))
def test_a_manifest_passes_the_kubernetes_schema(key: tuple[str, str]) -> None:
    kubernetes_validate.validate(manifests()[key], KUBERNETES_VERSION, strict=True)


def test_the_schema_check_refuses_a_misspelt_field() -> None:
    broken = manifests()[SHARDS]
    broken["spec"]["replica"] = broken["spec"].pop("replicas")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("key", [SHARDS, FOLLOWERS], ids=lambda key: key[1])
def test_each_daemon_is_reachable_by_name_and_probed_through_grpc_health(
    key: tuple[str, str],
) -> None:
    daemons = manifests()[key]
    service = manifests()["Service", daemons["spec"]["serviceName"]]
    assert service["spec"]["clusterIP"] == "None"  # headless: a stable name per daemon
    labels = daemons["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    (container,) = daemons["spec"]["template"]["spec"]["containers"]
    grpc_port = next(p["containerPort"] for p in container["ports"] if p["name"] == "grpc")
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == grpc_port
    mounts = {m["name"] for m in container["volumeMounts"]}
    assert (
        "data" in mounts
        and daemons["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    )
    assert "--auth-tokens" in container["args"]


def test_follower_n_follows_shard_n_with_a_token_from_a_secret() -> None:
    shards, followers = manifests()[SHARDS], manifests()[FOLLOWERS]
    assert followers["spec"]["replicas"] == shards["spec"]["replicas"]
    (container,) = followers["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    leader = args[args.index("--follow") + 1]
    grpc_port = next(
        p["containerPort"]
        for p in shards["spec"]["template"]["spec"]["containers"][0]["ports"]
        if p["name"] == "grpc"
    )
    # Shard N's stable name through the shards' headless service, N from the pod's index.
    assert (
        leader
        == f"{shards['metadata']['name']}-$(SHARD).{shards['spec']['serviceName']}:{grpc_port}"
    )
    env = {e["name"]: e["valueFrom"] for e in container["env"]}
    assert env["SHARD"] == {
        "fieldRef": {"fieldPath": "metadata.labels['apps.kubernetes.io/pod-index']"}
    }
    # The variable `serve --follow-token` reads (engram_cli: ENGRAM_STORE_<FLAG>).
    assert "secretKeyRef" in env["ENGRAM_STORE_FOLLOW_TOKEN"]


def test_the_container_file_copies_what_exists() -> None:
    text = (DEPLOY / "Containerfile").read_text()
    for line in re.findall(r"^COPY (?!--from)(.+)$", text, re.M):
        *sources, _ = line.split()
        for source in sources:
            assert (REPO_ROOT / source).exists(), source
