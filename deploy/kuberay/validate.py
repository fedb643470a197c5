"""Validate KubeRay manifests against KubeRay's own CRD schemas, offline.

    python deploy/kuberay/validate.py deploy/kuberay/raycluster.yaml deploy/kuberay/rayjob-*.yaml

The schemas are the `openAPIV3Schema` of version v1 of each CRD, stored in crds/ (see
crds/SOURCE.md). An OpenAPI v3 schema is close to JSON Schema draft 4; the differences that
matter are handled the way the Kubernetes API server handles them:

- `nullable: true` lets a value be null;
- `x-kubernetes-*` keys are annotations, except that `x-kubernetes-int-or-string` admits an
  integer or a string and `x-kubernetes-preserve-unknown-fields` keeps unknown fields;
- an object with declared `properties` and no `additionalProperties` refuses unknown fields,
  as `kubectl apply` does with its default strict field validation (the API server would
  otherwise drop them silently, so a misspelt field would do nothing);
- formats `int32`, `int64`, `int-or-string`, `date-time` are checked.

Not checked: CEL rules (`x-kubernetes-validations`), which need the API server. Documents of
other kinds (ConfigMap, PersistentVolumeClaim) get only the checks in `check_core`.
"""

from __future__ import annotations

import gzip
import json
import re
import sys
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterator

import yaml
from jsonschema import Draft4Validator, FormatChecker, ValidationError, validators

CRDS = Path(__file__).resolve().parent / "crds"
SCHEMA_FILES = {"RayCluster": "rayclusters.v1.schema.json.gz", "RayJob": "rayjobs.v1.schema.json.gz"}
API_VERSION = "ray.io/v1"
DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_draft4_type = Draft4Validator.VALIDATORS["type"]
_draft4_properties = Draft4Validator.VALIDATORS["properties"]


def _type(validator, types, instance, schema):
    if instance is None and schema.get("nullable") is True:
        return
    yield from _draft4_type(validator, types, instance, schema)


def _properties(validator, properties, instance, schema):
    yield from _draft4_properties(validator, properties, instance, schema)
    if not validator.is_type(instance, "object"):
        return
    if "additionalProperties" in schema or schema.get("x-kubernetes-preserve-unknown-fields") is True:
        return
    unknown = sorted(set(instance) - set(properties))
    if unknown:
        yield ValidationError(f"unknown field(s) {unknown}; known: {sorted(properties)}")


def _int_or_string(validator, value, instance, schema):
    if value is True and (isinstance(instance, bool) or not isinstance(instance, (int, str))):
        yield ValidationError(f"{instance!r} is neither an integer nor a string")


def _format_checker() -> FormatChecker:
    checker = FormatChecker([])

    def int_range(bits: int):
        def check(value: object) -> bool:
            if not isinstance(value, int) or isinstance(value, bool):
                return True  # `type` speaks to non-integers
            return -(2 ** (bits - 1)) <= value < 2 ** (bits - 1)
        return check

    checker.checks("int32")(int_range(32))
    checker.checks("int64")(int_range(64))
    checker.checks("int-or-string")(lambda v: isinstance(v, (int, str)) and not isinstance(v, bool))

    @checker.checks("date-time", raises=ValueError)
    def date_time(value: object) -> bool:
        if isinstance(value, str):
            datetime.fromisoformat(value.replace("Z", "+00:00"))
        return True

    return checker


OpenAPIValidator = validators.extend(
    Draft4Validator,
    {"type": _type, "properties": _properties, "x-kubernetes-int-or-string": _int_or_string},
)


@lru_cache(maxsize=None)
def crd_schema(kind: str) -> dict:
    with gzip.open(CRDS / SCHEMA_FILES[kind]) as f:
        return json.load(f)


def check_core(doc: dict) -> Iterator[str]:
    """What the API server checks of any object: apiVersion, kind, a valid metadata.name."""
    for key in ("apiVersion", "kind", "metadata"):
        if key not in doc:
            yield f"missing {key}"
    name = (doc.get("metadata") or {}).get("name", "")
    if not (isinstance(name, str) and DNS1123_LABEL.match(name) and len(name) <= 63):
        yield f"metadata.name {name!r} is not a DNS-1123 label"
    if doc.get("kind") == "ConfigMap":
        for key, value in (doc.get("data") or {}).items():
            if not isinstance(value, str):
                yield f"ConfigMap data[{key!r}] must be a string, not {type(value).__name__}"


def errors(doc: dict) -> list[str]:
    """Every problem with one manifest document, as 'path: message' lines; [] when valid."""
    found = list(check_core(doc))
    kind = doc.get("kind")
    if kind in SCHEMA_FILES:
        if doc.get("apiVersion") != API_VERSION:
            found.append(f"apiVersion {doc.get('apiVersion')!r}; the stored schema is {API_VERSION}")
        validator = OpenAPIValidator(crd_schema(kind), format_checker=_format_checker())
        for err in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path))):
            where = ".".join(str(p) for p in err.absolute_path) or "<root>"
            found.append(f"{where}: {err.message}")
    return found


def load_documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def main(argv: list[str]) -> int:
    bad = 0
    for name in argv:
        for doc in load_documents(Path(name)):
            label = f"{name}: {doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}"
            problems = errors(doc)
            bad += bool(problems)
            print(f"{label}: {'ok' if not problems else 'INVALID'}")
            for p in problems:
                print(f"  {p}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
