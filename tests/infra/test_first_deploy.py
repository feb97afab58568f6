"""Issue 12: what a first real `terraform apply` / `skaffold run` would hit, and queue-depth autoscaling.

Same offline tools and fixtures as test_infra.py (rendered overlays, HCL parsed by checkov's parser,
skaffold.yaml parsed), plus the capacity model in deploy/capacity/.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import math
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

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
    _pod_spec,
    _val,
)

pytestmark = pytest.mark.infra

NAMESPACE = "hybrid-chat"
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "APIService", "StorageClass"}
GMP_COLLECTOR = {
    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "gmp-system"}},
    "podSelector": {"matchLabels": {"app.kubernetes.io/name": "collector"}},
}

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


def test_the_weights_cache_claim_the_pod_mounts_is_in_the_pods_namespace(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    docs = rendered["weights-cache"]
    deployment = _obj(docs, "Deployment", "gemma-server")
    claims = [
        v["persistentVolumeClaim"]["claimName"]
        for v in _pod_spec(docs, "gemma-server")["volumes"]
        if "persistentVolumeClaim" in v
    ]
    assert claims == ["gemma-weights"]
    pvc = _obj(docs, "PersistentVolumeClaim", "gemma-weights")
    assert pvc["metadata"]["namespace"] == deployment["metadata"]["namespace"] == NAMESPACE


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
    address = tf.one("google_compute_global_address")
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
        "file.googleapis.com",  # Filestore weights cache
        "monitoring.googleapis.com",  # Managed Prometheus, custom-metrics adapter
        "logging.googleapis.com",
        "storage.googleapis.com",
    ):
        assert api in services, api


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
        "roles/storage.objectAdmin",
    }
    rtype, push = granted["roles/artifactregistry.writer"]
    assert rtype == "google_artifact_registry_repository_iam_member", "push to chat-app-repo only"
    assert _val(push, "repository") == "${google_artifact_registry_repository.chat.name}"
    _, storage = granted["roles/storage.objectAdmin"]
    (condition,) = _blocks(storage, "condition")
    assert "${local.skaffold_build_bucket}" in _val(condition, "expression")
    assert _val(tf.locals, "skaffold_build_bucket") == "${var.project_id}_cloudbuild"
    assert "-compute@developer.gserviceaccount.com" in _val(tf.locals, "cloud_build_service_account")
    assert _blocks(tf.variables["cloud_build_service_account"], "validation")


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


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_let_the_managed_prometheus_collectors_scrape(
    overlay: str, rendered: dict[str, list[dict[str, Any]]]
) -> None:
    docs = rendered[overlay]
    for name, port in (("gemma-server", 8000), ("gradio-chat", 7860)):
        rules = _obj(docs, "NetworkPolicy", name)["spec"]["ingress"]
        admitted = [
            r
            for r in rules
            if {"port": port, "protocol": "TCP"} in r.get("ports", [])
            and ("from" not in r or GMP_COLLECTOR in r["from"])
        ]
        assert admitted, f"{overlay}: {name} refuses the gmp-system collectors"
    # Still nobody else on the model server.
    gemma_sources = [
        s for r in _obj(docs, "NetworkPolicy", "gemma-server")["spec"]["ingress"] for s in r["from"]
    ]
    assert all("ipBlock" not in s for s in gemma_sources)


# PodMonitorings (and the ManagedCertificate) against their vendored CRDs: test_crd_schemas.py.


def test_the_weights_cache_is_shared_by_every_replica_the_hpa_adds(
    rendered: dict[str, list[dict[str, Any]]], tf_text: str
) -> None:
    docs = rendered["weights-cache"]
    assert _obj(docs, "HorizontalPodAutoscaler", "gemma-server")["spec"]["maxReplicas"] > 1
    pvc = _obj(docs, "PersistentVolumeClaim", "gemma-weights")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    # Filestore Basic HDD: the CSI driver refuses less than 1 TiB.
    size = pvc["spec"]["resources"]["requests"]["storage"]
    assert re.fullmatch(r"\d+Ti", size) and int(size[:-2]) >= 1
    assert '"file.googleapis.com"' in tf_text


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


def test_capacity_example_table_in_the_docs_is_the_models_output(capacity: Any) -> None:
    table = capacity.table(capacity.simulate(capacity.Params()))
    assert table in (DEPLOY / "capacity" / "example-day.md").read_text(encoding="utf-8")
    assert table in (REPO / "docs" / "deploy.md").read_text(encoding="utf-8")
