"""The custom resources of every overlay against their real CRDs' schemas (vendored in tests/infra/crds/).

kubernetes-validate knows only the built-in kinds (HPA, Deployment, APIService, ...). PodMonitoring and
ManagedCertificate are checked here against the `openAPIV3Schema` of the CRD that defines them, made
strict like `kubeconform -strict`: an unknown or misspelt field is an error, where the API server would
prune it without a word (a PodMonitoring `intervall: 15s` would scrape at the default and nobody would
know). BackendConfig and FrontendConfig have no CRD file upstream; their schemas come from the CRD catalog
kubeconform uses (datreeio/CRDs-catalog, extracted from GKE's CRDs, already strict). CEL rules
(`x-kubernetes-validations`) are not evaluated: see crds/README.md.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.infra.test_infra import _YAML_TO_JSON, _infra_json

pytestmark = pytest.mark.infra

CRDS = Path(__file__).parent / "crds"
# (apiVersion, kind) -> vendored CRD (.yaml) or catalog JSON schema (.json)
KINDS = {
    ("monitoring.googleapis.com/v1", "PodMonitoring"): "monitoring.googleapis.com_podmonitorings.yaml",
    ("networking.gke.io/v1", "ManagedCertificate"): "managedcertificates-crd.yaml",
    ("cloud.google.com/v1", "BackendConfig"): "backendconfig_v1.json",
    ("networking.gke.io/v1beta1", "FrontendConfig"): "frontendconfig_v1beta1.json",
}

_VALIDATE = """
import json, re, sys, jsonschema
schema, docs = json.load(sys.stdin)
# The API server checks `format: duration` as a Go duration ("15s", "1m30s"), not ISO 8601 as jsonschema
# would: the one format checked here.
formats = jsonschema.FormatChecker(formats=())
@formats.checks("duration")
def go_duration(value):
    return not isinstance(value, str) or re.fullmatch(r"([0-9]+(\\.[0-9]+)?(ns|us|\u00b5s|ms|s|m|h))+", value)
validator = jsonschema.Draft7Validator(schema, format_checker=formats)
errors = [
    f"{d['metadata']['name']}: {'/'.join(map(str, e.absolute_path))}: {e.message}"
    for d in docs
    for e in validator.iter_errors(d)
]
json.dump(errors, sys.stdout)
"""


def strict(schema: dict[str, Any]) -> dict[str, Any]:
    """An openAPIV3Schema node as JSON Schema, refusing fields it does not declare."""
    out = {k: v for k, v in schema.items() if not k.startswith("x-kubernetes-") and k != "nullable"}
    if schema.get("x-kubernetes-int-or-string") and "anyOf" not in out:
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if schema.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    if "properties" in out:
        out["properties"] = {name: strict(sub) for name, sub in out["properties"].items()}
        if "additionalProperties" not in out and not schema.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    if isinstance(out.get("additionalProperties"), dict):
        out["additionalProperties"] = strict(out["additionalProperties"])
    if isinstance(out.get("items"), dict):
        out["items"] = strict(out["items"])
    for key in ("anyOf", "allOf", "oneOf"):
        if key in out:
            out[key] = [strict(sub) for sub in out[key]]
    if isinstance(out.get("not"), dict):
        out["not"] = strict(out["not"])
    return out


def _schema(api_version: str, kind: str) -> dict[str, Any]:
    path = CRDS / KINDS[(api_version, kind)]
    if path.suffix == ".json":
        schema = json.loads(path.read_text(encoding="utf-8"))  # kubeconform's format: strict already
    else:
        (crd,) = _infra_json(_YAML_TO_JSON, stdin=path.read_text(encoding="utf-8"))
        group, version = api_version.split("/")
        assert crd["spec"]["group"] == group and crd["spec"]["names"]["kind"] == kind
        (served,) = [v for v in crd["spec"]["versions"] if v["name"] == version and v["served"]]
        schema = strict(served["schema"]["openAPIV3Schema"])
    # The API server accepts these on every object, declared or not (the ManagedCertificate CRD does not).
    schema["properties"]["apiVersion"] = {"const": api_version}
    schema["properties"]["kind"] = {"const": kind}
    schema["properties"].setdefault("metadata", {"type": "object"})
    schema.setdefault("required", [])
    schema["required"] = sorted({*schema["required"], "apiVersion", "kind", "metadata", "spec"})
    return schema


def _errors(schema: dict[str, Any], docs: list[dict[str, Any]]) -> list[str]:
    return _infra_json(_VALIDATE, stdin=json.dumps([schema, docs]))


def _custom(rendered: dict[str, list[dict[str, Any]]], api_version: str, kind: str) -> list[dict[str, Any]]:
    wanted = (api_version, kind)
    return [d for docs in rendered.values() for d in docs if (d["apiVersion"], d["kind"]) == wanted]


def test_the_vendored_crds_are_the_upstream_files() -> None:
    table = (CRDS / "README.md").read_text(encoding="utf-8")
    for name in KINDS.values():
        row = next(ln for ln in table.splitlines() if ln.startswith(f"| `{name}`"))
        recorded = re.search(r"`([0-9a-f]{64})`", row)
        assert recorded, row
        assert hashlib.sha256((CRDS / name).read_bytes()).hexdigest() == recorded.group(1), name
        assert re.search(r"@ [0-9a-f]{40}", row), "the source commit is recorded"


@pytest.mark.parametrize(("api_version", "kind"), sorted(KINDS))
def test_every_custom_resource_validates_against_its_crd(
    api_version: str, kind: str, rendered: dict[str, list[dict[str, Any]]]
) -> None:
    docs = _custom(rendered, api_version, kind)
    assert docs, f"no {kind} rendered"
    assert _errors(_schema(api_version, kind), docs) == []


def test_no_custom_resource_escapes_validation(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """Every kind kubernetes-validate does not know is validated here."""
    builtin_groups = {"v1", "apps/v1", "autoscaling/v2", "policy/v1", "networking.k8s.io/v1"}
    custom = {(d["apiVersion"], d["kind"]) for docs in rendered.values() for d in docs}
    custom = {k for k in custom if k[0] not in builtin_groups}
    assert custom == set(KINDS), custom


def test_the_crd_schemas_bite(rendered: dict[str, list[dict[str, Any]]]) -> None:
    schema = _schema("monitoring.googleapis.com/v1", "PodMonitoring")
    good = _custom(rendered, "monitoring.googleapis.com/v1", "PodMonitoring")[0]
    broken = []
    misspelt = copy.deepcopy(good)
    misspelt["spec"]["endpoints"][0]["intervall"] = misspelt["spec"]["endpoints"][0].pop("interval")
    broken.append(misspelt)
    no_endpoints = copy.deepcopy(good)
    del no_endpoints["spec"]["endpoints"]
    broken.append(no_endpoints)
    bad_interval = copy.deepcopy(good)
    bad_interval["spec"]["endpoints"][0]["interval"] = "15 seconds"
    broken.append(bad_interval)
    for doc in broken:
        assert _errors(schema, [doc]), doc["spec"]
    cert_schema = _schema("networking.gke.io/v1", "ManagedCertificate")
    cert = copy.deepcopy(_custom(rendered, "networking.gke.io/v1", "ManagedCertificate")[0])
    cert["spec"]["domains"] = ["*.example.com"]  # managed certificates take no wildcard
    assert _errors(cert_schema, [cert])
    backend_schema = _schema("cloud.google.com/v1", "BackendConfig")
    backend = copy.deepcopy(_custom(rendered, "cloud.google.com/v1", "BackendConfig")[0])
    backend["spec"]["healthCheck"]["path"] = backend["spec"]["healthCheck"].pop("requestPath")
    assert _errors(backend_schema, [backend])
    backend = copy.deepcopy(_custom(rendered, "cloud.google.com/v1", "BackendConfig")[0])
    backend["spec"]["timeoutSec"] = "3600"  # a string where GKE wants an integer
    assert _errors(backend_schema, [backend])
