"""Writes google-provider-6.50.0.json: the arguments and blocks of the Terraform google provider that
infra/ uses, and the attributes each of those resources and data sources can be read for, taken from the
provider schema that cdktf generated its bindings from.

Why: `terraform validate` needs the provider binary, which cannot be downloaded where these tests run. The
cdktf bindings (PyPI `cdktf-cdktf-provider-google`) carry a jsii assembly generated from the provider's own
schema (`terraform providers schema -json`), with each argument's Terraform name, whether it is required,
and the nesting of its blocks; each resource's class has a getter per attribute (arguments and computed
values alike). tests/infra/test_terraform_schema.py checks infra/*.tf against the subset written here
(resource and data types used in infra/, nothing else). Regenerate after adding a resource type:

    pip download --no-deps cdktf-cdktf-provider-google==16.12.1 -d /tmp/cdktf
    .venv-infra/bin/python tests/infra/schemas/extract_google_schema.py \
        /tmp/cdktf/cdktf_cdktf_provider_google-16.12.1-py3-none-any.whl

(standard library only; run from the repository root.)
"""

from __future__ import annotations

import io
import json
import re
import sys
import tarfile
import zipfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[3]
OUT_DIR = Path(__file__).resolve().parent
LINK = re.compile(
    r"registry\.terraform\.io/providers/hashicorp/google/([0-9.]+)/docs/(resources|data-sources)/(\w+)#(\w+)"
)
# A resource's or data source's class: "Represents a {@link .../docs/resources/storage_bucket google_...}".
CLASS_LINK = re.compile(
    r"registry\.terraform\.io/providers/hashicorp/google/([0-9.]+)/docs/(resources|data-sources)/(\w+) "
)


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])([A-Z])", r"_\1", name).lower()


def _assembly(wheel: Path) -> dict[str, Any]:
    with zipfile.ZipFile(wheel) as whl:
        (name,) = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
        with tarfile.open(fileobj=io.BytesIO(whl.read(name))) as tgz:
            member = tgz.extractfile("package/.jsii")
            assert member is not None
            return json.load(member)


def _struct_fqn(type_ref: dict[str, Any]) -> tuple[str | None, bool]:
    """The struct a property's type names (directly, or as array elements), and whether it is a list."""
    if "fqn" in type_ref:
        return (None if type_ref["fqn"].startswith("cdktf.") else type_ref["fqn"]), False
    for option in type_ref.get("union", {}).get("types", []):
        collection = option.get("collection")
        if collection and collection["kind"] == "array" and "fqn" in collection["elementtype"]:
            return collection["elementtype"]["fqn"], True
        if "fqn" in option and not option["fqn"].startswith("cdktf."):
            return option["fqn"], False
    return None, False


def _schema(types: dict[str, Any], fqn: str, depth: int = 0) -> tuple[dict[str, Any], str, str, str]:
    """({argument: {"required": bool, "block": nested or absent}}, version, kind, type name) of a struct."""
    args: dict[str, Any] = {}
    version = kind = tf_type = ""
    for prop in types[fqn].get("properties", []):
        docs = prop.get("docs", {})
        match = LINK.search(docs.get("remarks", "") + " " + docs.get("summary", ""))
        if match:
            version, kind, tf_type, tf_name = match.groups()
        else:
            # An argument without a description has no link: its Terraform name is the jsii name in
            # snake_case (checked against every linked argument in main()).
            tf_name = _snake(prop["name"])
        entry: dict[str, Any] = {"required": not prop.get("optional", False)}
        nested, _ = _struct_fqn(prop["type"])
        if nested and nested in types and depth < 12:
            entry["block"] = _schema(types, nested, depth + 1)[0]
        args[tf_name] = entry
    return args, version, kind, tf_type


def _attributes(types: dict[str, Any]) -> dict[tuple[str, str], list[str]]:
    """{(section, type): attribute names}: the getters of each resource's and data source's class (its
    `fooInput` getters only echo what the configuration set, and are left out)."""
    found: dict[tuple[str, str], list[str]] = {}
    for spec in types.values():
        if spec.get("kind") != "class" or spec.get("base") not in (
            "cdktf.TerraformResource",
            "cdktf.TerraformDataSource",
        ):
            continue
        match = CLASS_LINK.search(spec.get("docs", {}).get("summary", ""))
        if not match:
            continue
        section = "resource" if match.group(2) == "resources" else "data"
        found[(section, f"google_{match.group(3)}")] = sorted(
            _snake(p["name"])
            for p in spec.get("properties", [])
            if not p.get("static") and not p["name"].endswith("Input")
        )
    return found


def main(wheel: str) -> None:
    types = _assembly(Path(wheel))["types"]
    used = set()
    for tf in sorted((REPO / "infra").glob("*.tf")):
        used |= set(re.findall(r'^(resource|data) "(google_\w+)"', tf.read_text(encoding="utf-8"), re.M))
    out: dict[str, Any] = {"resource": {}, "data": {}}
    versions = set()
    for fqn, spec in types.items():
        if spec.get("datatype") and "cdktf.TerraformMetaArguments" in spec.get("interfaces", []):
            args, version, kind, tf_type = _schema(types, fqn)
            if not args:
                continue
            section = "resource" if kind == "resources" else "data"
            name = f"google_{tf_type}"
            if (section, name) in used:
                out[section][name] = args
                versions.add(version)
    # The fallback naming holds wherever both are known.
    mismatched = [
        (prop["name"], m.group(4))
        for spec in types.values()
        for prop in spec.get("properties", [])
        if spec.get("datatype")
        and (m := LINK.search(prop.get("docs", {}).get("remarks", "")))
        and _snake(prop["name"]) != m.group(4)
    ]
    print(f"jsii names whose snake_case is not the Terraform name: {len(mismatched)}, e.g. {mismatched[:8]}")
    missing = used - {(s, n) for s in out for n in out[s]}
    assert not missing, f"not found in the assembly: {sorted(missing)}"
    readable = _attributes(types)
    attributes = {s: {n: readable[(s, n)] for n in sorted(out[s])} for s in ("resource", "data")}
    (version,) = versions
    document = {
        "provider": "registry.terraform.io/hashicorp/google",
        "version": version,
        "source": f"PyPI cdktf-cdktf-provider-google, jsii assembly ({Path(wheel).name})",
        "generator": "tests/infra/schemas/extract_google_schema.py",
        **out,
        "attributes": attributes,
    }
    path = OUT_DIR / f"google-provider-{version}.json"
    path.write_text(json.dumps(document, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    print(f"{path.relative_to(REPO)}: {len(out['resource'])} resources, {len(out['data'])} data sources")


if __name__ == "__main__":
    main(sys.argv[1])
