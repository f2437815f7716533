"""``nodemesh apply``, ``delete`` and ``get``: manifests in and out of the local API server.

Everything is validated before anything is sent (:mod:`validation`): one bad document
means every problem is printed, the command exits 1 and nothing is applied. Apply is create or
replace (PUT with the current ``resourceVersion``); ``status`` in a manifest is ignored, as the API
server ignores it outside the status subresource.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import yaml

from localcluster.apiclient import ApiClient, ApiError
from localcluster.columns import table_rows
from localcluster.layout import data_dir, load_api_token, load_cluster
from nodemesh.errors import NodemeshError
from nodemesh.kinds import KINDS, Kind, by_kind, lookup
from validation import Document, document_warnings, read_sources, validate_documents

__all__ = ["register"]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("apply", help="create or update objects from manifests (validated first)")
    p.add_argument("-f", "--filename", action="append", required=True, help="FILE, DIR or - (repeatable)")
    _common(p)
    p.add_argument("--dry-run", action="store_true", help="validate only")
    p.set_defaults(func=_apply)

    p = sub.add_parser("delete", help="delete the objects in manifests (or KIND NAME)")
    p.add_argument("kind", nargs="?", help="kind (when not using -f)")
    p.add_argument("names", nargs="*", help="names (when not using -f)")
    p.add_argument("-f", "--filename", action="append", help="FILE, DIR or - (repeatable)")
    p.add_argument("--ignore-not-found", action="store_true")
    _common(p)
    p.set_defaults(func=_delete)

    kinds = ", ".join(sorted(k.plural for k in KINDS))
    p = sub.add_parser("get", help="show objects", description=f"Kinds: {kinds}")
    p.add_argument("kind", help="kind: pods, po, httproutes, gateways, nodes, …")
    p.add_argument("name", nargs="?", help="one object's name")
    p.add_argument("-A", "--all-namespaces", action="store_true")
    p.add_argument("-o", "--output", choices=("table", "yaml", "json", "wide"), default="table")
    _common(p)
    p.set_defaults(func=_get)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--validate",
        choices=("warn", "strict"),
        default="warn",
        help="unknown fields: warn (default; a vendored schema may predate the manifest) or strict",
    )
    p.add_argument(
        "-n", "--namespace", default=None, help="namespace (default: the manifest's, else default)"
    )
    p.add_argument("--data-dir", dest="sub_data_dir", default=None, help="local cluster state directory")


def _client(args: argparse.Namespace) -> ApiClient:
    d = str(data_dir(getattr(args, "sub_data_dir", None) or args.data_dir))
    cluster = load_cluster(d)
    return ApiClient(cluster.api_url, token=load_api_token(d))


def _ref(kind: Kind, name: str) -> str:
    return f"{kind.plural}.{kind.group}/{name}" if kind.group else f"{kind.plural}/{name}"


def _load(args: argparse.Namespace) -> list[Document] | None:
    docs, errors = read_sources(args.filename)
    strict = args.validate == "strict"
    errors += validate_documents(docs, strict=strict)
    if not strict:
        for w in document_warnings(docs):
            print(f"warning: {w}", file=sys.stderr)
    if errors:
        for e in errors:
            print(f"error: {e}", file=sys.stderr)
        files = len({e.source for e in errors})
        print(f"nothing applied: {len(errors)} problem(s) in {files} file(s)", file=sys.stderr)
        return None
    return docs


def _place(d: Document, namespace: str | None) -> tuple[Kind, str, dict[str, Any]]:
    kind = by_kind(d.obj["kind"])
    obj = {k: v for k, v in d.obj.items() if k != "status"}
    meta = dict(obj["metadata"])
    for k in ("resourceVersion", "uid", "creationTimestamp", "managedFields", "generation"):
        meta.pop(k, None)
    ns = ""
    if kind.namespaced:
        ns = meta.get("namespace") or namespace or "default"
        if namespace and meta.get("namespace") and meta["namespace"] != namespace:
            raise NodemeshError(
                f"{d.source}: document {d.index}: namespace {meta['namespace']!r} != -n {namespace}"
            )
        meta["namespace"] = ns
    obj["metadata"] = meta
    obj["apiVersion"] = kind.api_version
    return kind, ns, obj


def _apply(args: argparse.Namespace) -> int:
    docs = _load(args)
    if docs is None:
        return 1
    if args.dry_run:
        print(f"{len(docs)} object(s) valid")
        return 0
    client = _client(args)
    # Namespaces first, as kubectl does, so objects in them can be created in the same run.
    docs = sorted(docs, key=lambda d: d.obj.get("kind") != "Namespace")
    failed = 0
    for d in docs:
        kind, ns, obj = _place(d, args.namespace)
        name = obj["metadata"]["name"]
        try:
            current = client.get(kind, name, ns)
            if current is None:
                client.create(kind, obj, ns)
                print(f"{_ref(kind, name)} created")
            else:
                obj["metadata"]["resourceVersion"] = current["metadata"].get("resourceVersion", "")
                client.replace(kind, obj, ns)
                print(f"{_ref(kind, name)} configured")
        except ApiError as e:
            failed += 1
            print(f"error: {d.source}: document {d.index}: {_ref(kind, name)}: {e}", file=sys.stderr)
    return 1 if failed else 0


def _delete(args: argparse.Namespace) -> int:
    targets: list[tuple[Kind, str, str]] = []
    if args.filename:
        docs = _load(args)
        if docs is None:
            return 1
        for d in reversed(docs):
            kind, ns, obj = _place(d, args.namespace)
            targets.append((kind, ns, obj["metadata"]["name"]))
    else:
        kind_found = lookup(args.kind or "")
        if kind_found is None or not args.names:
            print("error: give -f FILE, or KIND NAME...", file=sys.stderr)
            return 2
        ns = (args.namespace or "default") if kind_found.namespaced else ""
        targets = [(kind_found, ns, n) for n in args.names]
    client = _client(args)
    missing = 0
    for kind, ns, name in targets:
        if client.delete(kind, name, ns):
            print(f"{_ref(kind, name)} deleted")
        elif not args.ignore_not_found:
            missing += 1
            print(f"error: {_ref(kind, name)} not found", file=sys.stderr)
    return 1 if missing else 0


def _get(args: argparse.Namespace) -> int:
    kind = lookup(args.kind)
    if kind is None:
        print(
            f"error: unknown kind {args.kind!r}; known: {', '.join(k.plural for k in KINDS)}", file=sys.stderr
        )
        return 2
    client = _client(args)
    ns = "" if (args.all_namespaces or not kind.namespaced) else (args.namespace or "default")
    if args.name:
        obj = client.get(kind, args.name, ns)
        if obj is None:
            print(f"error: {_ref(kind, args.name)} not found", file=sys.stderr)
            return 1
        obj.setdefault("apiVersion", kind.api_version)
        obj.setdefault("kind", kind.kind)
        items = [obj]
    else:
        items = client.list(kind, ns)
    if args.output == "json":
        out = items[0] if args.name else {"apiVersion": "v1", "kind": "List", "items": items}
        print(json.dumps(out, indent=2))
    elif args.output == "yaml":
        out = items[0] if args.name else {"apiVersion": "v1", "kind": "List", "items": items}
        print(yaml.safe_dump(out, sort_keys=False, default_flow_style=False), end="")
    elif not items:
        where = "" if not kind.namespaced else " in any namespace" if not ns else f" in namespace {ns}"
        print(f"No {kind.plural} found{where}.", file=sys.stderr)
    else:
        rows = table_rows(kind, items, with_namespace=kind.namespaced and not ns, wide=args.output == "wide")
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for r in rows:
            print("   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return 0
