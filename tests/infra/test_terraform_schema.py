"""infra/*.tf against the google provider's own schema: the part of `terraform validate` that can run here.

`terraform validate` needs the provider binary, which cannot be downloaded where these tests run. The
provider's schema can: cdktf's prebuilt bindings (PyPI `cdktf-cdktf-provider-google` 16.12.1) are generated
from `terraform providers schema -json` of hashicorp/google 6.50.0, and schemas/extract_google_schema.py
wrote the subset infra/ uses to schemas/google-provider-6.50.0.json. Checked here: every argument and block
of every resource and data source exists at its place in the schema (a misspelt or misplaced argument is
what `terraform validate` would refuse first), every required argument is set, and every attribute read
from a resource or data source (`google_x.name.attr`, `data.google_x.name[0].attr`) is one it has. Not
checked: value types and the provider's own validations (enum values, formats), which need the binary.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.infra.test_infra import INFRA, Terraform, _val

pytestmark = pytest.mark.infra

SCHEMA_FILE = Path(__file__).parent / "schemas" / "google-provider-6.50.0.json"
META_ARGUMENTS = {"depends_on", "count", "for_each", "lifecycle", "provider", "provisioner", "connection"}
PARSER_KEYS = {"__start_line__", "__end_line__"}
# `google_x.name.attr`, `google_x.name[0].attr`, `google_x.name[*].attr`, `data.google_x.name.attr`.
REFERENCE = re.compile(r"\b(data\.)?(google_[a-z0-9_]+)\.([a-z0-9_]+)(?:\[[^\]]*\])?\.([a-z0-9_]+)")


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))


def problems(body: dict[str, Any], args: dict[str, Any], where: str, top: bool = True) -> list[str]:
    """What `terraform validate` would refuse in a (checkov-parsed) body: unknown and missing arguments."""
    found: list[str] = []
    present = set()
    for key, value in body.items():
        if key in PARSER_KEYS or (top and key in META_ARGUMENTS):
            continue
        if key == "dynamic":
            for dynamic in value:
                for name, spec in dynamic.items():
                    present.add(name)
                    if name not in args or "block" not in args[name]:
                        found.append(f"{where}: dynamic {name} is not a block here")
                        continue
                    for content in spec.get("content", []):
                        found += problems(content, args[name]["block"], f"{where}.{name}", top=False)
            continue
        present.add(key)
        if key not in args:
            found.append(f"{where}: unknown argument {key}")
        elif "block" in args[key]:
            for item in value:
                if isinstance(item, dict):
                    found += problems(item, args[key]["block"], f"{where}.{key}", top=False)
    for name, spec in args.items():
        if spec["required"] and name not in present:
            found.append(f"{where}: required argument {name} is missing")
    return found


def _all_problems(tf: Terraform, schema: dict[str, Any]) -> list[str]:
    found = []
    for section, items in (("resource", tf.resources), ("data", tf.data)):
        for rtype, name, body in items:
            if rtype not in schema[section]:
                found.append(f"{section} {rtype} is not in the schema file (re-run its generator)")
                continue
            found += problems(body, schema[section][rtype], f"{rtype}.{name}")
    return found


def unknown_attributes(text: str, schema: dict[str, Any]) -> list[str]:
    """Attributes read in `text` (HCL, full-line comments dropped) that their resource or data source
    does not have."""
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith(("#", "//")))
    found = []
    for match in REFERENCE.finditer(code):
        section = "data" if match.group(1) else "resource"
        rtype, attribute = match.group(2), match.group(4)
        known = schema["attributes"][section].get(rtype)
        if known is None:
            found.append(f"{section} {rtype} has no attributes in the schema file (re-run its generator)")
        elif attribute not in known:
            found.append(f"{match.group(0)}: {rtype} has no attribute {attribute}")
    return found


def _infra_text() -> str:
    return "\n".join(p.read_text(encoding="utf-8") for p in sorted(INFRA.glob("*.tf")))


def test_the_schema_is_the_provider_version_infra_pins(tf: Terraform, schema: dict[str, Any]) -> None:
    constraint = next(
        _val(block, "google")["version"]
        for t in tf.terraform_blocks
        for block in t.get("required_providers", [])
        if "google" in block
    )
    assert constraint == "~> 6.0" and re.fullmatch(r"6\.\d+\.\d+", schema["version"]), (constraint, schema)
    assert schema["provider"] == "registry.terraform.io/hashicorp/google"


def test_every_argument_and_block_in_infra_exists_in_the_provider_schema(
    tf: Terraform, schema: dict[str, Any]
) -> None:
    assert _all_problems(tf, schema) == []
    # It looked at the nested blocks, not only the top level.
    cluster = schema["resource"]["google_container_cluster"]
    assert "service_account" in cluster["cluster_autoscaling"]["block"]["auto_provisioning_defaults"]["block"]


def test_every_attribute_infra_reads_exists_in_the_provider_schema(schema: dict[str, Any]) -> None:
    text = _infra_text()
    assert unknown_attributes(text, schema) == []
    # It saw the references that matter: the build account read from Compute Engine, the bucket it is
    # granted on, the project number.
    read = {m.group(0) for m in REFERENCE.finditer(text)}
    assert "data.google_compute_default_service_account.default[0].email" in read
    assert "google_storage_bucket.cloudbuild.name" in read
    assert "data.google_project.this.number" in read
    # A misspelt attribute, on a resource and on a data source, is caught.
    assert unknown_attributes("x = google_storage_bucket.cloudbuild.bucket_name", schema)
    assert unknown_attributes("x = data.google_compute_default_service_account.default[0].mail", schema)
    assert not unknown_attributes("# x = google_storage_bucket.cloudbuild.bucket_name", schema)


def test_the_schema_check_bites(tf: Terraform, schema: dict[str, Any]) -> None:
    def broken(change: Any) -> list[str]:
        copied = copy.deepcopy(tf)
        change(copied)
        return _all_problems(copied, schema)

    def body(t: Terraform, rtype: str) -> dict[str, Any]:
        return next(b for r, _, b in t.resources if r == rtype)

    # A misspelt top-level argument.
    assert broken(lambda t: body(t, "google_container_cluster").update(autopilot_enabled=[True]))
    # A misplaced nested one (the node service account is under auto_provisioning_defaults).
    assert broken(
        lambda t: body(t, "google_container_cluster")["cluster_autoscaling"][0].update(
            service_account=["x@y.iam.gserviceaccount.com"]
        )
    )
    # A required argument missing.
    assert broken(lambda t: body(t, "google_project_iam_member").pop("role"))

    # A misspelt argument inside a dynamic block's content.
    def dynamic(t: Terraform) -> None:
        cluster = body(t, "google_container_cluster")
        (spec,) = cluster["master_authorized_networks_config"][0]["dynamic"][0].values()
        spec["content"][0]["cidr"] = spec["content"][0].pop("cidr_block")

    assert broken(dynamic)
