"""Issue 12: what a first real `terraform apply` / `skaffold run` would hit, and queue-depth autoscaling.

Same offline tools and fixtures as test_infra.py (rendered overlays, HCL parsed by checkov's parser,
skaffold.yaml parsed), plus the capacity model in deploy/capacity/.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import itertools
import json
import math
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

# Fixtures (rendered, tf, skaffold, ...) come from conftest.py.
from tests.infra.test_infra import (
    DEPLOY,
    OVERLAYS,
    REPO,
    Terraform,
    _blocks,
    _config_map,
    _container,
    _obj,
    _objs,
    _pod_spec,
    _val,
)

pytestmark = pytest.mark.infra

NAMESPACE = "hybrid-chat"
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "APIService", "StorageClass"}
# Managed Prometheus's collectors: namespace gke-gmp-system on Autopilot, gmp-system on Standard.
GMP_NAMESPACES = ("gke-gmp-system", "gmp-system")
COLLECTOR_LABELS = {"app.kubernetes.io/name": "collector"}


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def _depends_on(body: dict[str, Any]) -> list[str]:
    return [str(x) for x in (_val(body, "depends_on") or [])]


def _resource(tf: Terraform, rtype: str, name: str) -> dict[str, Any]:
    found = [body for t, n, body in tf.resources if (t, n) == (rtype, name)]
    assert len(found) == 1, f"{rtype}.{name}"
    return found[0]


# ========================================================================================================
# 1. vLLM as uid 10001
# ========================================================================================================
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_vllm_has_user_and_logname_because_uid_10001_has_no_passwd_entry(
    overlay: str, rendered: dict[str, list[dict[str, Any]]]
) -> None:
    docs = rendered[overlay]
    pod = _pod_spec(docs, "gemma-server")
    c = _container(docs, "gemma-server")
    uid = c["securityContext"].get("runAsUser", pod["securityContext"].get("runAsUser"))
    assert uid == 10001
    env = _env(c)
    # getpass.getuser() reads LOGNAME, USER, LNAME, USERNAME before falling back to the passwd database.
    assert env.get("USER") and env.get("LOGNAME"), "torch's cache dir calls getpass.getuser() at import"
    assert env.get("HOME")


# ========================================================================================================
# 2. Every object in its namespace
# ========================================================================================================
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_namespaced_object_of_every_overlay_is_in_the_app_namespace(
    overlay: str, rendered: dict[str, list[dict[str, Any]]]
) -> None:
    missing = [
        f"{d['kind']}/{d['metadata']['name']}: {d['metadata'].get('namespace')}"
        for d in rendered[overlay]
        if d["kind"] not in CLUSTER_SCOPED and d["metadata"].get("namespace") != NAMESPACE
    ]
    assert not missing, f"{overlay}: objects outside {NAMESPACE}: {missing}"


def test_the_weights_cache_mounts_the_projects_weights_bucket_that_terraform_creates(
    rendered: dict[str, list[dict[str, Any]]], tf: Terraform
) -> None:
    docs = rendered["weights-cache"]
    (volume,) = [v for v in _pod_spec(docs, "gemma-server")["volumes"] if "csi" in v]
    project = _config_map(docs, "hybrid-chat-config")["HYBRID_CHAT_GEMINI_PROJECT"]
    bucket = _resource(tf, "google_storage_bucket", "model_weights")
    assert _val(bucket, "name") == "${var.project_id}-model-weights"
    assert volume["csi"]["volumeAttributes"]["bucketName"] == f"{project}-model-weights"
    assert _val(bucket, "location") == "${var.region}", (
        "in the cluster's region: GPU nodes of any zone read it"
    )
    # Nothing of the Filestore cache is left: no claim, no PersistentVolumeClaim.
    assert not _objs(docs, "PersistentVolumeClaim")
    assert not [v for v in _pod_spec(docs, "gemma-server")["volumes"] if "persistentVolumeClaim" in v]


# ========================================================================================================
# 3. IAP: first deploy without the audience; static IP; who may pass
# ========================================================================================================
def test_iap_overlay_deploys_without_an_audience_and_the_docs_describe_the_503_until_it_is_set(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    config = _config_map(rendered["iap"], "hybrid-chat-config")
    assert config["HYBRID_CHAT_TRUST_IAP"] == "true"
    # First deploy: no audience (it does not exist yet); a placeholder would be verified and refuse everyone.
    assert "HYBRID_CHAT_IAP_AUDIENCE" not in config
    assert config.get("HYBRID_CHAT_IAP_VERIFY_JWT", "true") == "true", "never trust the unsigned header"
    kustomization = (DEPLOY / "overlays" / "iap" / "kustomization.yaml").read_text(encoding="utf-8")
    assert "will not start" not in kustomization and "503" in kustomization
    doc = (REPO / "docs" / "deploy.md").read_text(encoding="utf-8")
    section = doc.split("## 7.", 1)[1].split("\n## ", 1)[0]
    for phrase in ("503", "HYBRID_CHAT_IAP_AUDIENCE", "enable_iap", "organisation"):
        assert phrase in section, phrase
    assert "refuses to start" not in section


def test_terraform_reserves_the_static_ip_the_iap_ingress_names(
    tf: Terraform, rendered: dict[str, list[dict[str, Any]]]
) -> None:
    address = _resource(tf, "google_compute_global_address", "iap")
    assert _val(address, "name") == "${var.iap_static_ip_name}"
    assert _val(address, "count") == "${var.enable_iap ? 1 : 0}"
    ingress = _obj(rendered["iap"], "Ingress", "gradio-chat")
    name = ingress["metadata"]["annotations"]["kubernetes.io/ingress.global-static-ip-name"]
    assert _val(tf.variables["iap_static_ip_name"], "default") == name
    assert "iap_ip_address" in tf.outputs
    backend = (DEPLOY / "overlays" / "iap" / "backendconfig.yaml").read_text(encoding="utf-8")
    assert "organisation" in backend, "say who the Google-managed OAuth client admits"


# ========================================================================================================
# 4. A fresh project: the APIs, and everything waits for them
# ========================================================================================================
def test_a_fresh_project_gets_every_api_the_stack_calls(tf: Terraform) -> None:
    services = set(re.findall(r"[a-z]+\.googleapis\.com", str(_val(tf.locals, "services"))))
    for api in (
        "iam.googleapis.com",  # service accounts, IAM members
        "cloudresourcemanager.googleapis.com",  # data "google_project", project IAM
        "containerfilesystem.googleapis.com",  # image streaming (the vLLM image)
        "cloudkms.googleapis.com",  # the key that encrypts Secrets
        "monitoring.googleapis.com",  # Managed Prometheus, custom-metrics adapter
        "logging.googleapis.com",
        "storage.googleapis.com",
    ):
        assert api in services, api
    # Filestore is no longer used: the weights come from Cloud Storage (deploy/components/weights-cache).
    assert "file.googleapis.com" not in services


def test_everything_that_calls_an_api_waits_for_the_apis(tf: Terraform) -> None:
    apis = "${google_project_service.apis}"
    data = next(body for t, n, body in tf.data if (t, n) == ("google_project", "this"))
    assert apis in _depends_on(data), "data.google_project needs Cloud Resource Manager"
    assert apis in _depends_on(_resource(tf, "google_service_account", "gke_nodes"))
    # Every resource either depends on the APIs itself or on something that does.
    waits: set[str] = {"data.google_project.this"}
    pending = [(t, n, b) for t, n, b in tf.resources if t != "google_project_service"]
    changed = True
    while changed:
        changed = False
        for t, n, b in list(pending):
            text = json.dumps(b)
            if apis in _depends_on(b) or any(
                w.split(".", 1)[-1] in text if w.startswith("data.") else f"${{{w}" in text for w in waits
            ):
                waits.add(f"{t}.{n}")
                pending.remove((t, n, b))
                changed = True
    assert not pending, f"not ordered after the APIs: {[f'{t}.{n}' for t, n, _ in pending]}"


# ========================================================================================================
# 5. Cloud Build can push and log
# ========================================================================================================
def test_the_cloud_build_service_account_can_push_write_logs_and_read_skaffolds_bucket(
    tf: Terraform,
) -> None:
    member = "${local.cloud_build_member}"
    granted = {
        _val(b, "role"): (t, b)
        for t, _, b in tf.resources
        if t.endswith("_iam_member") and _val(b, "member") == member
    }
    assert set(granted) == {
        "roles/artifactregistry.writer",
        "roles/logging.logWriter",
        "roles/storage.admin",
    }
    rtype, push = granted["roles/artifactregistry.writer"]
    assert rtype == "google_artifact_registry_repository_iam_member", "push to chat-app-repo only"
    assert _val(push, "repository") == "${google_artifact_registry_repository.chat.name}"
    # A build account that is not the legacy one must read the logs bucket itself (storage.buckets.get),
    # which roles/storage.objectAdmin lacks: a bucket role, on skaffold's bucket only, never the project.
    rtype, storage = granted["roles/storage.admin"]
    assert rtype == "google_storage_bucket_iam_member"
    assert _val(storage, "bucket") == "${google_storage_bucket.cloudbuild.name}"
    bucket = _resource(tf, "google_storage_bucket", "cloudbuild")
    assert _val(bucket, "name") == "${local.skaffold_build_bucket}"
    assert _val(tf.locals, "skaffold_build_bucket") == "${var.project_id}_cloudbuild"
    assert "retention_policy" not in bucket, "Cloud Build does not write logs into a bucket with retention"
    assert _val(bucket, "public_access_prevention") == "enforced"
    assert _val(bucket, "uniform_bucket_level_access") is True
    assert _blocks(tf.variables["cloud_build_service_account"], "validation")


def test_the_default_build_account_is_read_from_compute_engine_not_composed(tf: Terraform) -> None:
    """The Compute Engine default service account appears some time after the API is enabled: its e-mail
    comes from the data source (which reads the account), not from a string built by hand."""
    account = _val(tf.locals, "cloud_build_service_account")
    assert "developer.gserviceaccount.com" not in account and "data.google_project" not in account
    assert "data.google_compute_default_service_account.default[0].email" in account
    (data,) = [b for t, _, b in tf.data if t == "google_compute_default_service_account"]
    assert _val(data, "count") == '${var.cloud_build_service_account == "" ? 1 : 0}'
    assert "${google_project_service.apis}" in _depends_on(data), "read after Compute Engine is on"
    doc = (REPO / "docs" / "deploy.md").read_text(encoding="utf-8")
    assert "google_compute_default_service_account" in doc
    assert "terraform import google_storage_bucket.cloudbuild" in doc


def test_the_inputs_offer_no_control_plane_endpoint_the_cluster_does_not_have(
    tf: Terraform, tf_text: str
) -> None:
    cluster = tf.one("google_container_cluster")
    endpoints = _blocks(cluster, "control_plane_endpoints_config")
    if not any("dns_endpoint_config" in e for e in endpoints):
        for where, text in (
            ("infra/*.tf", tf_text),
            ("terraform.tfvars.example", (REPO / "infra" / "terraform.tfvars.example").read_text("utf-8")),
            ("docs/deploy.md", (REPO / "docs" / "deploy.md").read_text(encoding="utf-8")),
        ):
            assert not re.search(r"DNS[- ]based endpoint|DNS endpoint", text, re.I), where


# ========================================================================================================
# 6. Risks: GPU driver, skaffold deadline, the project placeholder, Docker layers
# ========================================================================================================
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_gemma_asks_autopilot_for_the_latest_gpu_driver(
    overlay: str, rendered: dict[str, list[dict[str, Any]]]
) -> None:
    selector = _pod_spec(rendered[overlay], "gemma-server")["nodeSelector"]
    assert selector == {
        "cloud.google.com/gke-accelerator": "nvidia-l4",
        "cloud.google.com/gke-gpu-driver-version": "latest",
    }


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_vllm_has_the_gpu_driver_gke_mounts_on_its_library_path(
    overlay: str, rendered: dict[str, list[dict[str, Any]]]
) -> None:
    """GKE mounts the node's NVIDIA driver at /usr/local/nvidia; the vLLM image's CUDA 12.8 base does not
    put it on the library path, and vLLM then finds no platform (Google's Gemma 3 vLLM manifest sets it)."""
    paths = str(_env(_container(rendered[overlay], "gemma-server")).get("LD_LIBRARY_PATH", "")).split(":")
    assert paths[0] == "/usr/local/nvidia/lib64", paths
    # The value replaces the image's own: its CUDA libraries stay on the path.
    assert "/usr/local/cuda/lib64" in paths


def test_the_post_deploy_checklist_says_what_each_check_must_print() -> None:
    doc = (REPO / "docs" / "deploy.md").read_text(encoding="utf-8")
    section = doc.split("## After the deploy: checklist", 1)[1].split("\n## ", 1)[0]
    for expected in (
        "kubectl get pods -n gke-gmp-system",  # the collectors' namespace on Autopilot
        "kubectl -n hybrid-chat get hpa",  # current metric values, not <unknown>
        "<unknown>",
        "Automatically detected platform cuda.",  # vLLM found the GPU
        "No platform detected",
        "/readyz",
    ):
        assert expected in section, expected


def test_skaffold_waits_out_a_cold_start_and_tolerates_pending_on_the_way(skaffold: dict[str, Any]) -> None:
    deploy = skaffold["deploy"]
    # Startup probe budget (30 min) + GPU node provisioning + image pull.
    assert deploy["statusCheckDeadlineSeconds"] >= 3600
    assert deploy["tolerateFailuresUntilDeadline"] is True
    doc = (REPO / "docs" / "deploy.md").read_text(encoding="utf-8")
    assert "statusCheckDeadlineSeconds" in doc and "rollout goes on" in doc


@pytest.mark.skipif(shutil.which("sh") is None, reason="needs a POSIX shell")
def test_skaffold_refuses_to_deploy_while_project_env_holds_the_placeholder(
    skaffold: dict[str, Any], tmp_path: Path
) -> None:
    (hook,) = skaffold["deploy"]["kubectl"]["hooks"]["before"]
    command = hook["host"]["command"]
    env_file = tmp_path / "deploy" / "base" / "project.env"
    env_file.parent.mkdir(parents=True)
    shutil.copy(DEPLOY / "base" / "project.env", env_file)
    assert "HYBRID_CHAT_GEMINI_PROJECT=PROJECT_ID" in env_file.read_text(encoding="utf-8")
    refused = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, check=False)  # noqa: S603
    assert refused.returncode != 0 and "PROJECT_ID" in refused.stderr
    env_file.write_text("HYBRID_CHAT_GEMINI_PROJECT=my-real-project\n", encoding="utf-8")
    accepted = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, check=False)  # noqa: S603
    assert accepted.returncode == 0, accepted.stderr


# The Dockerfile's dependency layer (installed from the lock, before the source is copied) is checked in
# test_lock.py: test_dockerfile_installs_the_lock_before_it_copies_the_source and test_the_layer_check_bites.


# ========================================================================================================
# Scaling: Gemma on its queue, the chat app on its streams, the router's spill in step with the HPA
# ========================================================================================================
def test_gemma_scales_on_vllm_queue_depth_through_managed_prometheus(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    for docs in rendered.values():
        hpa = _obj(docs, "HorizontalPodAutoscaler", "gemma-server")
        assert hpa["spec"]["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": "gemma-server",
        }
        names = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
        assert names[0] == "prometheus.googleapis.com|vllm:num_requests_waiting|gauge"
        assert "prometheus.googleapis.com|vllm:num_requests_running|gauge" in names
        scaling = _config_map(docs, "gemma-autoscaling")
        assert hpa["spec"]["minReplicas"] == int(scaling["GEMMA_MIN_REPLICAS"]) >= 1
        assert hpa["spec"]["maxReplicas"] == int(scaling["GEMMA_MAX_REPLICAS"]) > hpa["spec"]["minReplicas"]
        targets = [m["pods"]["target"]["averageValue"] for m in hpa["spec"]["metrics"]]
        assert targets == [scaling["GEMMA_TARGET_WAITING"], scaling["GEMMA_TARGET_RUNNING"]]
        max_num_seqs = int(_config_map(docs, "gemma-config")["MAX_NUM_SEQS"])
        assert 0 < float(scaling["GEMMA_TARGET_RUNNING"]) <= max_num_seqs
        assert "replicas" not in _obj(docs, "Deployment", "gemma-server")["spec"]
        # The metric reaches Cloud Monitoring: a PodMonitoring on a port the vLLM container exposes.
        monitoring = _obj(docs, "PodMonitoring", "gemma-server")
        deployment = _obj(docs, "Deployment", "gemma-server")
        assert monitoring["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]
        ports = {p["name"] for p in _container(docs, "gemma-server")["ports"]}
        assert {e["port"] for e in monitoring["spec"]["endpoints"]} <= ports
        assert all(e["path"] == "/metrics" for e in monitoring["spec"]["endpoints"])


def test_the_router_spills_before_the_hpa_target_would_be_hidden(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    """The router caps the queue near its threshold: a target at or above it would never be exceeded."""
    for docs in rendered.values():
        scaling = _config_map(docs, "gemma-autoscaling")
        config = _config_map(docs, "hybrid-chat-config")
        assert config["HYBRID_CHAT_AUTO_GEMMA_MAX_WAITING"] == scaling["ROUTER_SPILL_WAITING"]
        assert float(scaling["GEMMA_TARGET_WAITING"]) < float(scaling["ROUTER_SPILL_WAITING"])
    # The app reads exactly this variable and this vLLM gauge.
    settings = (REPO / "graph" / "settings.py").read_text(encoding="utf-8")
    assert re.search(r"^\s+auto_gemma_max_waiting\b", settings, re.M)
    assert '"vllm:num_requests_waiting"' in (REPO / "graph" / "load.py").read_text(encoding="utf-8")


def test_the_chat_app_scales_on_the_streams_it_exports(rendered: dict[str, list[dict[str, Any]]]) -> None:
    exported = re.search(
        r'Gauge\(\s*"(hybrid_chat_ui_active_streams)"', (REPO / "ui" / "chat.py").read_text(encoding="utf-8")
    )
    assert exported, "the app no longer exports the gauge the chat HPA scales on"
    for docs in rendered.values():
        hpa = _obj(docs, "HorizontalPodAutoscaler", "gradio-chat")
        (pods,) = [m["pods"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
        assert pods["metric"]["name"] == f"prometheus.googleapis.com|{exported.group(1)}|gauge"
        limit = int(_config_map(docs, "hybrid-chat-config")["HYBRID_CHAT_MAX_CONCURRENT_STREAMS"])
        assert 0 < float(pods["target"]["averageValue"]) <= limit
        monitoring = _obj(docs, "PodMonitoring", "gradio-chat")
        assert monitoring["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/name": "gradio-chat"}


def _selects(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    """A Kubernetes label selector (matchLabels and matchExpressions) against a set of labels."""
    if selector is None:
        return True
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for e in selector.get("matchExpressions", []):
        value, values = labels.get(e["key"]), e.get("values", [])
        if not {
            "In": value in values,
            "NotIn": value not in values,
            "Exists": e["key"] in labels,
            "DoesNotExist": e["key"] not in labels,
        }[e["operator"]]:
            return False
    return True


def _ingress_admits(policy: dict[str, Any], namespace: str, labels: dict[str, str], port: int) -> bool:
    """Does an ingress NetworkPolicy (in the app's namespace) admit a Pod of `namespace` on `port`?"""
    ns_labels = {"kubernetes.io/metadata.name": namespace}
    for rule in policy["spec"].get("ingress", []):
        if rule.get("ports") and {"port": port, "protocol": "TCP"} not in rule["ports"]:
            continue
        if "from" not in rule:
            return True
        for peer in rule["from"]:
            if "ipBlock" in peer:
                continue
            if "namespaceSelector" in peer:
                ns_ok = _selects(peer["namespaceSelector"], ns_labels)
            else:  # a podSelector alone selects in the policy's own namespace
                ns_ok = namespace == policy["metadata"]["namespace"]
            if ns_ok and _selects(peer.get("podSelector"), labels):
                return True
    return False


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_let_the_managed_prometheus_collectors_scrape(
    overlay: str, rendered: dict[str, list[dict[str, Any]]]
) -> None:
    docs = rendered[overlay]
    for name, port in (("gemma-server", 8000), ("gradio-chat", 7860)):
        policy = _obj(docs, "NetworkPolicy", name)
        for namespace in GMP_NAMESPACES:
            assert _ingress_admits(policy, namespace, COLLECTOR_LABELS, port), (
                f"{overlay}: {name} refuses the collectors of {namespace}"
            )
    # Still nobody else on the model server: not a collector-looking Pod elsewhere, not an address.
    gemma = _obj(docs, "NetworkPolicy", "gemma-server")
    assert not _ingress_admits(gemma, "default", COLLECTOR_LABELS, 8000)
    assert not _ingress_admits(gemma, "gke-gmp-system", {"app.kubernetes.io/name": "rule-evaluator"}, 8000)
    assert all("ipBlock" not in s for r in gemma["spec"]["ingress"] for s in r["from"])
    # The IAP overlay's chat Pods: the collectors, and otherwise only Google's front ends.
    if overlay == "iap":
        chat = _obj(docs, "NetworkPolicy", "gradio-chat")
        assert not _ingress_admits(chat, NAMESPACE, {"app.kubernetes.io/name": "gemma-server"}, 7860)


def test_the_collector_selector_check_bites() -> None:
    standard = {"matchLabels": {"kubernetes.io/metadata.name": "gmp-system"}}
    only_standard = {
        "metadata": {"namespace": NAMESPACE},
        "spec": {
            "ingress": [
                {
                    "from": [
                        {
                            "namespaceSelector": standard,
                            "podSelector": {"matchLabels": COLLECTOR_LABELS},
                        }
                    ],
                    "ports": [{"port": 8000, "protocol": "TCP"}],
                }
            ]
        },
    }
    assert _ingress_admits(only_standard, "gmp-system", COLLECTOR_LABELS, 8000)
    assert not _ingress_admits(only_standard, "gke-gmp-system", COLLECTOR_LABELS, 8000)
    assert not _ingress_admits(only_standard, "gmp-system", COLLECTOR_LABELS, 7860)


def _peer_matches(peer: dict[str, Any], policy_namespace: str, to: str | tuple[str, dict[str, str]]) -> bool:
    """Is `to` (an IP address, or a Pod as (namespace, labels)) one of the peer's?"""
    if isinstance(to, str):
        if "ipBlock" not in peer:
            return False
        address, block = ipaddress.ip_address(to), peer["ipBlock"]
        return address in ipaddress.ip_network(block["cidr"]) and not any(
            address in ipaddress.ip_network(e) for e in block.get("except", [])
        )
    if "ipBlock" in peer:
        return False
    namespace, labels = to
    if "namespaceSelector" in peer:
        ns_ok = _selects(peer["namespaceSelector"], {"kubernetes.io/metadata.name": namespace})
    else:  # a podSelector alone selects in the policy's own namespace
        ns_ok = namespace == policy_namespace
    return ns_ok and _selects(peer.get("podSelector"), labels)


def _egress_allows(
    policies: list[dict[str, Any]], to: str | tuple[str, dict[str, str]], port: int, protocol: str = "TCP"
) -> bool:
    """Do these egress policies (all selecting the same Pod) let it connect to `to` on `port`? No policy
    with Egress: everything is allowed."""
    egress = [p for p in policies if "Egress" in p["spec"].get("policyTypes", [])]
    if not egress:
        return True
    for policy in egress:
        for rule in policy["spec"].get("egress", []):
            if rule.get("ports") and {"port": port, "protocol": protocol} not in rule["ports"]:
                continue
            if "to" not in rule or any(
                _peer_matches(peer, policy["metadata"]["namespace"], to) for peer in rule["to"]
            ):
                return True
    return False


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_model_server_may_resolve_names_and_reach_the_internet_over_https_only(
    overlay: str, rendered: dict[str, list[dict[str, Any]]]
) -> None:
    """vLLM holds the Hugging Face token: DNS, and HTTPS to the internet for the weights, nothing else."""
    docs = rendered[overlay]
    gemma_labels = _obj(docs, "Deployment", "gemma-server")["spec"]["template"]["metadata"]["labels"]
    policies = [
        p
        for p in _objs(docs, "NetworkPolicy")
        if p["metadata"]["namespace"] == NAMESPACE and _selects(p["spec"]["podSelector"], gemma_labels)
    ]
    kube_dns = ("kube-system", {"k8s-app": "kube-dns"})
    allowed = [
        (kube_dns, 53, "UDP"),
        (kube_dns, 53, "TCP"),
        ("169.254.20.10", 53, "UDP"),  # NodeLocal DNSCache, always on in Autopilot
        ("169.254.169.254", 53, "UDP"),  # Cloud DNS for GKE, through the metadata server
        ("18.244.28.1", 443, "TCP"),  # a public address: Hugging Face's CDN is one of many
    ]
    refused = [
        ("18.244.28.1", 80, "TCP"),
        ("18.244.28.1", 22, "TCP"),
        ("10.8.0.1", 443, "TCP"),  # a Service or Pod address
        ("172.16.0.2", 443, "TCP"),  # the control plane's private endpoint
        ("169.254.169.254", 80, "TCP"),  # the metadata server: no Google Cloud API for this Pod
        (kube_dns, 443, "TCP"),
        ((NAMESPACE, {"app.kubernetes.io/name": "gradio-chat"}), 7860, "TCP"),
        ((NAMESPACE, gemma_labels), 8000, "TCP"),
    ]
    assert [t for t in allowed if not _egress_allows(policies, *t)] == []
    assert [t for t in refused if _egress_allows(policies, *t)] == []


def test_metrics_on_the_dev_load_balancer_are_a_documented_choice() -> None:
    """/metrics is served on the app's port (the collectors scrape the Pods directly): the dev overlay's L4
    load balancer cannot filter paths, IAP puts it behind sign-in like every path. The docs say so."""
    doc = (REPO / "docs" / "deploy.md").read_text(encoding="utf-8")
    section = doc.split("### Network policies", 1)[1].split("\n## ", 1)[0]
    for phrase in ("/metrics", "dev overlay", "IAP", "gemma-server-egress", "HF_HUB_OFFLINE=1"):
        assert phrase in section, phrase
    # What the docs promise: no user, session or message in any label of the app's metrics.
    labels = set()
    for source in [*(REPO / "graph").glob("*.py"), *(REPO / "ui").glob("*.py")]:
        for match in re.finditer(
            r'(?:Counter|Gauge|Histogram)\(\s*"hybrid_chat_\w+",\s*"[^"]*",\s*\[([^\]]*)\]',
            source.read_text(encoding="utf-8"),
        ):
            labels |= set(re.findall(r'"(\w+)"', match.group(1)))
    assert {"backend", "outcome"} <= labels, labels  # it found the definitions
    assert not {name for name in labels if re.search(r"user|session|message|prompt|email", name)}, labels


# PodMonitorings (and the ManagedCertificate) against their vendored CRDs: test_crd_schemas.py.


def test_the_weights_cache_is_read_by_every_replica_and_written_only_by_the_loader(
    rendered: dict[str, list[dict[str, Any]]], tf: Terraform
) -> None:
    docs = rendered["weights-cache"]
    assert _obj(docs, "HorizontalPodAutoscaler", "gemma-server")["spec"]["maxReplicas"] > 1
    # Who reads and who writes: the principals name the Kubernetes service accounts that really exist.
    reader = _resource(tf, "google_storage_bucket_iam_member", "gemma_weights_reader")
    writer = _resource(tf, "google_storage_bucket_iam_member", "weights_loader_writer")
    assert _val(reader, "role") == "roles/storage.objectViewer"
    assert _val(writer, "role") == "roles/storage.objectUser"
    for grant in (reader, writer):
        assert _val(grant, "bucket") == "${google_storage_bucket.model_weights.name}"
    gemma_sa = _pod_spec(docs, "gemma-server")["serviceAccountName"]
    assert f"subject/ns/${{var.namespace}}/sa/{gemma_sa}" in _val(tf.locals, "gemma_ksa_principal")
    assert _val(reader, "member") == "${local.gemma_ksa_principal}"
    job_docs = [
        d
        for d in yaml.safe_load_all(
            (DEPLOY / "components" / "weights-cache" / "load-weights-job.yaml").read_text(encoding="utf-8")
        )
        if d
    ]
    job = next(d for d in job_docs if d["kind"] == "Job")
    loader_sa = job["spec"]["template"]["spec"]["serviceAccountName"]
    assert any(d["kind"] == "ServiceAccount" and d["metadata"]["name"] == loader_sa for d in job_docs)
    assert f"subject/ns/${{var.namespace}}/sa/{loader_sa}" in _val(tf.locals, "weights_loader_ksa_principal")
    assert _val(writer, "member") == "${local.weights_loader_ksa_principal}"
    # The loader writes where vLLM reads: same bucket, same model directory, same image.
    (job_volume,) = [v for v in job["spec"]["template"]["spec"]["volumes"] if "csi" in v]
    assert job_volume["csi"]["volumeAttributes"]["bucketName"] == "PROJECT_ID-model-weights"
    assert "readOnly" not in job_volume["csi"]
    (download,) = job["spec"]["template"]["spec"]["containers"]
    mount = next(m for m in download["volumeMounts"] if m["name"] == job_volume["name"])
    target = download["command"][download["command"].index("--local-dir") + 1]
    vllm = _container(docs, "gemma-server")
    vllm_mount = next(m for m in vllm["volumeMounts"] if m["name"] == "model-cache")
    model_dir = vllm["args"][vllm["args"].index("--model") + 1]
    assert target.removeprefix(mount["mountPath"]) == model_dir.removeprefix(vllm_mount["mountPath"])
    base_image = (DEPLOY / "base" / "gemma-deployment.yaml").read_text(encoding="utf-8")
    assert f"image: {download['image']}" in base_image
    assert download["command"][:3] == ["hf", "download", "google/gemma-3-12b-it"]
    assert job["metadata"]["namespace"] == NAMESPACE
    assert job["spec"]["template"]["metadata"]["annotations"]["gke-gcsfuse/volumes"] == "true"


def test_the_metrics_adapter_reads_cloud_monitoring_as_its_own_principal(tf: Terraform) -> None:
    grant = _resource(tf, "google_project_iam_member", "metrics_adapter_viewer")
    assert _val(grant, "role") == "roles/monitoring.viewer"
    assert _val(grant, "member") == "${local.metrics_adapter_principal}"
    expr = _val(tf.locals, "metrics_adapter_principal")
    assert "subject/ns/${var.metrics_adapter_namespace}/sa/${var.metrics_adapter_ksa}" in expr
    assert _val(tf.variables["metrics_adapter_namespace"], "default") == "custom-metrics"
    assert _val(tf.variables["metrics_adapter_ksa"], "default") == "custom-metrics-stackdriver-adapter"
    doc = (REPO / "docs" / "deploy.md").read_text(encoding="utf-8")
    assert "custom-metrics-stackdriver-adapter" in doc and "adapter_new_resource_model.yaml" in doc


# ========================================================================================================
# The capacity model (deploy/capacity/simulate.py)
# ========================================================================================================
@pytest.fixture(scope="module")
def capacity() -> Any:
    spec = importlib.util.spec_from_file_location("capacity_simulate", DEPLOY / "capacity" / "simulate.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    import sys

    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_capacity_model_conserves_turns(capacity: Any) -> None:
    for max_replicas in (1, 2, 4):
        hours = capacity.simulate(capacity.Params(max_replicas=max_replicas))
        for h in hours:
            assert math.isclose(h.gemma_turns + h.gemini_turns, h.turns, rel_tol=1e-9, abs_tol=1e-6)
            assert math.isclose(h.spilled_by_router + h.timed_out, h.gemini_turns, rel_tol=1e-9, abs_tol=1e-6)
            assert 0 <= h.spill_share <= 1


def test_capacity_model_spills_nothing_when_capacity_exceeds_the_load(capacity: Any) -> None:
    p = capacity.Params()
    replicas = math.ceil(max(p.turns_per_s) / p.replica_turns_per_s) + 1
    hours = capacity.simulate(capacity.Params(min_replicas=replicas, max_replicas=replicas))
    assert sum(h.gemini_turns for h in hours) == 0
    assert all(h.p95_ttft_s < p.first_token_timeout_s for h in hours)


def test_capacity_model_spill_falls_as_max_replicas_rises(capacity: Any) -> None:
    spills = [
        capacity.summary(capacity.simulate(capacity.Params(max_replicas=m)))["spill_share"]
        for m in (1, 2, 3, 4)
    ]
    assert all(a >= b for a, b in itertools.pairwise(spills)), spills
    assert spills[0] > spills[-1]


def test_capacity_model_spill_and_cost_follow_the_cold_start(capacity: Any) -> None:
    fast, slow = (capacity.summary(capacity.simulate(capacity.Params(cold_start_min=m))) for m in (10, 30))
    assert slow["spill_share"] >= fast["spill_share"]
    assert slow["gemini_usd"] >= fast["gemini_usd"]


def test_the_capacity_models_defaults_are_the_manifests_settings_and_each_has_a_source(
    capacity: Any, rendered: dict[str, list[dict[str, Any]]]
) -> None:
    p = capacity.Params()
    docs = rendered["dev"]
    vllm = _container(docs, "gemma-server")
    gpus = int(vllm["resources"]["limits"]["nvidia.com/gpu"])
    assert p.gpus_per_replica == gpus == int(vllm["args"][vllm["args"].index("--tensor-parallel-size") + 1])
    config = _config_map(docs, "gemma-config")
    assert p.max_num_seqs == int(config["MAX_NUM_SEQS"])
    assert p.gpu_memory_utilization == float(config["GPU_MEMORY_UTILIZATION"])
    scaling = _config_map(docs, "gemma-autoscaling")
    assert p.min_replicas == int(scaling["GEMMA_MIN_REPLICAS"])
    assert p.max_replicas == int(scaling["GEMMA_MAX_REPLICAS"])
    assert p.target_waiting == float(scaling["GEMMA_TARGET_WAITING"])
    assert p.target_running == float(scaling["GEMMA_TARGET_RUNNING"])
    assert p.router_spill_waiting == float(scaling["ROUTER_SPILL_WAITING"])
    # The inputs that describe the model, the GPU, prices and the cold start say where they come from.
    for name in (
        "weights_gb",
        "kv_layers_global",
        "kv_bytes_per_token_per_layer",
        "gpu_memory_gb",
        "hbm_gb_s",
        "bandwidth_efficiency",
        "step_overhead_ms",
        "prefill_tokens_per_s_per_gpu",
        "gpus_per_replica",
        "max_num_seqs",
        "target_running",
        "cold_start_min",
        "usd_per_gpu_hour",
    ):
        assert len(capacity.DEFAULTS_SOURCES[name]) > 30, name


def test_a_replica_serves_more_as_its_batch_grows_until_the_kv_cache_is_full(capacity: Any) -> None:
    # Decoding is bound by memory bandwidth: a bigger batch reads the weights once for more sequences, so
    # throughput rises while each sequence slows down; a batch the KV cache cannot hold is refused.
    rates = [capacity.Params(max_num_seqs=n).replica_turns_per_s for n in (16, 32, 64)]
    assert rates[0] < rates[1] < rates[2] and rates[2] > 1.8 * rates[0], rates
    per_sequence = [capacity.Params(max_num_seqs=n).decode_tokens_per_s_per_seq for n in (16, 32, 64)]
    assert per_sequence[0] > per_sequence[1] > per_sequence[2] >= 10, per_sequence
    assert capacity.Params().kv_sequences >= capacity.Params().max_num_seqs
    with pytest.raises(ValueError, match="KV cache"):
        capacity.Params(gpus_per_replica=2, max_num_seqs=64)
    # Google's 2-L4 shape serves less per GPU at its largest batch than 4 L4s at theirs.
    two = capacity.Params(gpus_per_replica=2, max_num_seqs=32, step_overhead_ms=4)
    assert two.replica_turns_per_s / 2 < capacity.Params().replica_turns_per_s / 4


def test_the_retuned_settings_spill_less_than_the_previous_ones_for_less(capacity: Any) -> None:
    before = capacity.summary(
        capacity.simulate(capacity.Params(max_num_seqs=16, target_running=12, cold_start_min=20))
    )
    after = capacity.summary(capacity.simulate(capacity.Params()))
    assert after["spill_share"] < before["spill_share"] / 5
    assert after["p95_ttft_s_worst_hour"] < before["p95_ttft_s_worst_hour"]
    assert after["gpu_usd"] + after["gemini_usd"] < before["gpu_usd"] + before["gemini_usd"]


def test_capacity_example_table_in_the_docs_is_the_models_output(capacity: Any) -> None:
    table = capacity.table(capacity.simulate(capacity.Params()))
    assert table in (DEPLOY / "capacity" / "example-day.md").read_text(encoding="utf-8")
    assert table in (REPO / "docs" / "deploy.md").read_text(encoding="utf-8")


# ========================================================================================================
# The cold-start note (docs/cold-start.md) against what is deployed
# ========================================================================================================
def test_the_cold_start_note_describes_the_mount_image_and_budget_that_are_deployed(
    capacity: Any, rendered: dict[str, list[dict[str, Any]]]
) -> None:
    note = (REPO / "docs" / "cold-start.md").read_text(encoding="utf-8")
    docs = rendered["weights-cache"]
    (volume,) = [v for v in _pod_spec(docs, "gemma-server")["volumes"] if "csi" in v]
    attributes = volume["csi"]["volumeAttributes"]
    # Every mount setting the component uses is explained in the note, with the value it has.
    for option in attributes["mountOptions"].split(","):
        key = option.split("=")[0] if "=" in option else option.rsplit(":", 1)[0]
        assert key in note, option
    for name in ("fileCacheCapacity", "fileCacheForRangeRead", "gcsfuseMetadataPrefetchOnMount"):
        assert f'`{name}: "{attributes[name]}"`' in note, name
    # The image it describes is the one pinned.
    image = _container(docs, "gemma-server")["image"]
    tag = re.search(r":(v[\d.]+)@", image)
    assert tag and f"vllm/vllm-openai:{tag[1]}@sha256:" in note
    # The choice is argued against the alternatives Google's guidance names.
    for alternative in ("Hyperdisk ML", "secondary boot disk", "Run:ai Model Streamer", "Filestore"):
        assert alternative in note, alternative
    # The budget's total is what the capacity model assumes, and each step names a source.
    total = re.search(r"\| \*\*Total\*\* \| \*\*[^|]*?(\d+) in the capacity model\*\*", note)
    assert total and int(total[1]) == capacity.Params().cold_start_min
    budget = note.split("| step | expected | source |", 1)[1].split("\n\n", 1)[0]
    rows = [r for r in budget.strip().splitlines()[1:] if r.startswith("|")]
    assert len(rows) >= 7 and all(len(r.split("|")[3].strip()) > 10 for r in rows), rows
    # The loader the note runs exists and targets the bucket infra creates.
    assert "deploy/components/weights-cache/load-weights-job.yaml" in note
    assert (DEPLOY / "components" / "weights-cache" / "load-weights-job.yaml").exists()
    assert "$PROJECT_ID-model-weights" in note


def test_the_deploy_doc_says_why_iap_stays_on_ingress_and_how_to_move_to_gateway_api() -> None:
    doc = (REPO / "docs" / "deploy.md").read_text(encoding="utf-8")
    section = doc.split("### Ingress + BackendConfig, not (yet) Gateway API", 1)[1].split("\n## ", 1)[0]
    for term in ("GCPBackendPolicy", "HealthCheckPolicy", "ManagedCertificate", "Certificate Manager"):
        assert term in section, term
