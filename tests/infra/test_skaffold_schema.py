"""skaffold.yaml against skaffold's own JSON schema for its apiVersion (vendored in schemas/).

`skaffold run` refuses a config that does not match its schema before it builds anything; skaffold is not
installed where these tests run, so its published schema stands in (draft-07, `additionalProperties:
false` throughout: a misspelt field fails here as it would there).
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest

from tests.infra.test_infra import _infra_json

pytestmark = pytest.mark.infra

SCHEMAS = Path(__file__).parent / "schemas"

_VALIDATE = """
import json, sys, jsonschema
schema, doc = json.load(sys.stdin)
json.dump([f"{'/'.join(map(str, e.absolute_path))}: {e.message[:200]}"
           for e in jsonschema.Draft7Validator(schema).iter_errors(doc)], sys.stdout)
"""


def _schema_for(config: dict[str, Any]) -> dict[str, Any]:
    version = config["apiVersion"].split("/")[1]
    path = SCHEMAS / f"skaffold-{version}.json"
    assert path.exists(), f"no vendored schema for {config['apiVersion']}: add it (schemas/README.md)"
    table = (SCHEMAS / "README.md").read_text(encoding="utf-8").splitlines()
    row = next(ln for ln in table if f"`{path.name}`" in ln)
    recorded = re.search(r"`([0-9a-f]{64})`", row)
    assert recorded and hashlib.sha256(path.read_bytes()).hexdigest() == recorded.group(1)
    return json.loads(path.read_text(encoding="utf-8"))


def _errors(schema: dict[str, Any], config: dict[str, Any]) -> list[str]:
    return _infra_json(_VALIDATE, stdin=json.dumps([schema, config]))


def test_skaffold_yaml_matches_skaffolds_schema(skaffold: dict[str, Any]) -> None:
    assert _errors(_schema_for(skaffold), skaffold) == []


def test_the_skaffold_schema_check_bites(skaffold: dict[str, Any]) -> None:
    schema = _schema_for(skaffold)
    misspelt = copy.deepcopy(skaffold)
    misspelt["deploy"]["statusCheckDeadlineSecond"] = misspelt["deploy"].pop("statusCheckDeadlineSeconds")
    assert _errors(schema, misspelt)
    wrong_type = copy.deepcopy(skaffold)
    wrong_type["build"]["googleCloudBuild"]["timeout"] = 1200
    assert _errors(schema, wrong_type)
    profile = copy.deepcopy(skaffold)
    profile["profiles"][0]["manifest"] = profile["profiles"][0].pop("manifests")
    assert _errors(schema, profile)
