"""Refresh a vendored schema: ``python -m validation.schemas.vendor CRD.yaml [VERSION] [--source TEXT]``.

Reads an upstream CustomResourceDefinition (e.g. gateway-api's
``config/crd/standard/gateway.networking.k8s.io_httproutes.yaml`` or cilium's
``pkg/k8s/apis/cilium.io/client/crds/v2/ciliumnetworkpolicies.yaml``), takes the ``openAPIV3Schema``
of VERSION (default: the storage version), drops every ``description`` (most of the bytes; nothing
validates them) and writes ``validation/schemas/<Kind>.json`` with the source in ``$comment``. A file
that is a bare schema (no ``kind: CustomResourceDefinition``) is taken as it is; its kind must then
be given with ``--kind``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).parent


def strip(node: Any) -> Any:
    if isinstance(node, list):
        return [strip(n) for n in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for k, v in node.items():
        if k == "description" and isinstance(v, str):
            continue
        out[k] = {pk: strip(pv) for pk, pv in v.items()} if k == "properties" else strip(v)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("crd")
    p.add_argument("version", nargs="?")
    p.add_argument("--kind")
    p.add_argument("--source", default="", help="where the CRD came from (repo, path, commit, bundle)")
    ns = p.parse_args(argv)
    doc = yaml.safe_load(Path(ns.crd).read_text())
    if doc.get("kind") == "CustomResourceDefinition":
        kind = doc["spec"]["names"]["kind"]
        versions = doc["spec"]["versions"]
        chosen = next(
            (v for v in versions if (v["name"] == ns.version if ns.version else v.get("storage"))), None
        )
        if chosen is None:
            print(f"no version {ns.version} in {ns.crd}", file=sys.stderr)
            return 1
        schema = chosen["schema"]["openAPIV3Schema"]
    else:
        kind, schema = ns.kind, doc
        if not kind:
            print("--kind is required for a bare schema", file=sys.stderr)
            return 1
    out = {"$comment": ns.source, **strip(schema)}
    (HERE / f"{kind}.json").write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")
    print(f"wrote {HERE / f'{kind}.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
