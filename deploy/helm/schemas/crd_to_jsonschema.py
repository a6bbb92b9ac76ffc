"""Turn a CustomResourceDefinition into the strict JSON schema the chart's tests validate its
custom resources with (kubernetes-validate bundles Kubernetes' own kinds, not CRDs).

    python deploy/helm/schemas/crd_to_jsonschema.py CRD.yaml VERSION > KIND-GROUP-VERSION.json

What it does to the CRD's ``openAPIV3Schema`` (as kubeconform's openapi2jsonschema does): an
object that lists its properties allows no others, unless it preserves unknown fields (so a
misspelt field fails), ``nullable`` becomes a ``null`` type, and ``apiVersion`` and ``kind``
must be the CRD's.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import yaml


def strict(node: Any) -> Any:
    if isinstance(node, list):
        return [strict(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: strict(value) for key, value in node.items()}
    if (
        out.get("type") == "object"
        and "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    if out.pop("nullable", False) and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    return out


def convert(crd: dict[str, Any], version: str) -> dict[str, Any]:
    spec = crd["spec"]
    (served,) = [v for v in spec["versions"] if v["name"] == version]
    schema: dict[str, Any] = strict(served["schema"]["openAPIV3Schema"])
    schema["properties"]["apiVersion"] = {"enum": [f"{spec['group']}/{version}"]}
    schema["properties"]["kind"] = {"enum": [spec["names"]["kind"]]}
    schema.setdefault("required", [])
    for field in ("apiVersion", "kind", "metadata", "spec"):
        if field in schema["properties"] and field not in schema["required"]:
            schema["required"].append(field)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["x-source"] = {
        "crd": crd["metadata"]["name"],
        "version": version,
        "annotations": crd["metadata"].get("annotations", {}),
    }
    return schema


def main() -> None:
    path, version = sys.argv[1], sys.argv[2]
    with open(path, encoding="utf-8") as file:
        (crd,) = [doc for doc in yaml.safe_load_all(file) if doc]
    json.dump(convert(crd, version), sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
