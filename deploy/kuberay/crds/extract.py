"""Regenerate a `<plural>.v1.schema.json.gz` here from a KubeRay CRD file.

    python deploy/kuberay/crds/extract.py path/to/ray.io_rayjobs.yaml [--version v1] [--out DIR]

Takes `spec.versions[name == version].schema.openAPIV3Schema` of the CustomResourceDefinition
unchanged and writes it as JSON (sorted keys, so that a diff between two KubeRay releases reads
well), gzip-compressed with a fixed mtime so that the same CRD gives the same bytes. Update
SOURCE.md beside it with the commit the CRD came from.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent


def openapi_schema(crd: dict, version: str) -> dict:
    """The OpenAPI v3 schema of one served version of a CRD, as it is in the CRD."""
    if crd.get("kind") != "CustomResourceDefinition":
        raise ValueError(f"not a CustomResourceDefinition: kind={crd.get('kind')!r}")
    versions = {v["name"]: v for v in crd["spec"]["versions"]}
    if version not in versions:
        raise ValueError(f"version {version!r} not in CRD; it has {sorted(versions)}")
    return versions[version]["schema"]["openAPIV3Schema"]


def output_name(crd: dict, version: str) -> str:
    return f"{crd['spec']['names']['plural']}.{version}.schema.json.gz"


def write_schema(schema: dict, path: Path) -> None:
    text = json.dumps(schema, sort_keys=True, separators=(",", ":")) + "\n"
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as gz:
        gz.write(text.encode())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("crd", type=Path, help="a CustomResourceDefinition YAML file")
    parser.add_argument("--version", default="v1")
    parser.add_argument("--out", type=Path, default=HERE, help="folder to write into")
    args = parser.parse_args(argv)
    crd = yaml.safe_load(args.crd.read_text())
    schema = openapi_schema(crd, args.version)
    target = args.out / output_name(crd, args.version)
    write_schema(schema, target)
    print(f"wrote {target} ({target.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
