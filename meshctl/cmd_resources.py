"""``nodemesh apply``, ``delete`` and ``get``: manifests in and out of the local API server.

Everything is validated before anything is sent (:mod:`validation`): one bad document
means every problem is printed, the command exits 1 and nothing is applied. Apply is create or
replace (PUT with the current ``resourceVersion``); ``status`` in a manifest is ignored, as the API
server ignores it outside the status subresource.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import TYPE_CHECKING, Any

from localcluster.apiclient import ApiClient, ApiError
from localcluster.columns import table_rows
from localcluster.layout import data_dir, load_api_token, load_cluster
from nodemesh.errors import NodemeshError
from nodemesh.kinds import KINDS, Kind, by_kind, lookup

if TYPE_CHECKING:
    from validation import Document

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
    p.add_argument("-o", "--output", choices=("table", "yaml", "json", "wide", "name"), default="table")
    p.add_argument("-l", "--selector", default="", help="label selector, e.g. app=web,tier!=db")
    p.add_argument("-w", "--watch", action="store_true", help="after listing, print changes as they happen")
    _common(p)
    p.set_defaults(func=_get)

    p = sub.add_parser("describe", help="show one object in detail: spec summary, status, conditions")
    p.add_argument("kind", help="kind: pod, service, gateway, httproute, cnp, …")
    p.add_argument("name", nargs="?", help="the object's name (default: every object of the kind)")
    p.add_argument("-l", "--selector", default="", help="label selector (without NAME)")
    _common(p)
    p.set_defaults(func=_describe)


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


def _client(args: argparse.Namespace) -> Any:
    """A real cluster when one is named (``--kubeconfig``, ``--context`` or ``$KUBECONFIG``, as kubectl
    reads them), else the local cluster's API server (the zero-configuration default)."""
    kubeconfig = getattr(args, "kubeconfig", None) or os.environ.get("KUBECONFIG")
    context = getattr(args, "context", None)
    explicit_dir = getattr(args, "sub_data_dir", None) or args.data_dir
    if (kubeconfig or context) and not explicit_dir:
        from .kubeclient import KubeApiClient

        return KubeApiClient(kubeconfig, context)
    d = str(data_dir(explicit_dir))
    cluster = load_cluster(d)
    return ApiClient(cluster.api_url, token=load_api_token(d))


def _ref(kind: Kind, name: str) -> str:
    """kubectl's ``<kind>[.<group>]/<name>`` (``deployment.apps/web``, ``pod/web-1``)."""
    k = kind.kind.lower()
    return f"{k}.{kind.group}/{name}" if kind.group else f"{k}/{name}"


# validation (JSON schemas) and yaml are imported by the verbs that use them: `get` stays light
def _load(args: argparse.Namespace) -> list[Document] | None:
    from validation import document_warnings, read_sources, validate_documents

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
                rv = current["metadata"].get("resourceVersion", "")
                obj["metadata"]["resourceVersion"] = rv
                new = client.replace(kind, obj, ns)
                # the API server keeps the resourceVersion of a write that changed nothing
                same = (new.get("metadata") or {}).get("resourceVersion") == rv
                print(f"{_ref(kind, name)} {'unchanged' if same else 'configured'}")
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


def _kind_arg(name: str) -> Kind | None:
    kind = lookup(name)
    if kind is None:
        print(f"error: unknown kind {name!r}; known: {', '.join(k.plural for k in KINDS)}", file=sys.stderr)
    return kind


def _get(args: argparse.Namespace) -> int:
    kind = _kind_arg(args.kind)
    if kind is None:
        return 2
    if args.name and args.selector:
        print("error: give a NAME or a selector (-l), not both", file=sys.stderr)
        return 2
    client = _client(args)
    ns = "" if (args.all_namespaces or not kind.namespaced) else (args.namespace or "default")
    rv = ""
    if args.name:
        obj = client.get(kind, args.name, ns)
        if obj is None:
            print(f"error: {_ref(kind, args.name)} not found", file=sys.stderr)
            return 1
        obj.setdefault("apiVersion", kind.api_version)
        obj.setdefault("kind", kind.kind)
        items = [obj]
        rv = str(obj["metadata"].get("resourceVersion", ""))
    else:
        items, rv = client.list_with_version(kind, ns, args.selector)
    with_ns = kind.namespaced and not ns
    if args.output in ("json", "yaml"):
        out = items[0] if args.name else {"apiVersion": "v1", "kind": "List", "items": items}
        _dump(out, args.output)
    elif args.output == "name":
        for o in items:
            print(_ref(kind, o["metadata"]["name"]))
    elif not items:
        if not args.watch:
            where = "" if not kind.namespaced else " in any namespace" if not ns else f" in namespace {ns}"
            print(f"No {kind.plural} found{where}.", file=sys.stderr)
    else:
        _print_rows(table_rows(kind, items, with_namespace=with_ns, wide=args.output == "wide"))
    if not args.watch:
        return 0
    # like kubectl get -w: the listing, then one line (or document) per change, until interrupted
    widths: list[int] | None = None
    for etype, obj in client.watch(kind, ns, args.selector, rv):
        if args.name and obj["metadata"].get("name") != args.name:
            continue
        if args.output in ("json", "yaml"):
            _dump({"type": etype, "object": obj}, args.output, compact=True)
        elif args.output == "name":
            print(_ref(kind, obj["metadata"]["name"]), flush=True)
        else:
            rows = table_rows(kind, [obj], with_namespace=with_ns, wide=args.output == "wide")
            if etype == "DELETED":
                rows[1][-1] = "deleted"
            widths = widths or [max(len(c) + 2, 8) for c in rows[0]]
            print("   ".join(c.ljust(w) for c, w in zip(rows[1], widths, strict=True)).rstrip(), flush=True)
    return 0


def _dump(out: Any, fmt: str, compact: bool = False) -> None:
    if fmt == "json":
        print(json.dumps(out) if compact else json.dumps(out, indent=2), flush=True)
    else:
        import yaml

        print(("---\n" if compact else "") + yaml.safe_dump(out, sort_keys=False), end="", flush=True)


def _print_rows(rows: list[list[str]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def _describe(args: argparse.Namespace) -> int:
    from .describe import describe

    kind = _kind_arg(args.kind)
    if kind is None:
        return 2
    client = _client(args)
    ns = (args.namespace or "default") if kind.namespaced else ""
    if args.name:
        obj = client.get(kind, args.name, ns)
        if obj is None:
            print(f"error: {_ref(kind, args.name)} not found", file=sys.stderr)
            return 1
        objs = [obj]
    else:
        objs = client.list(kind, ns, args.selector)
        if not objs:
            print(f"No {kind.plural} found in namespace {ns}.", file=sys.stderr)
            return 1
    related: dict[str, list[dict[str, Any]]] = {}
    if kind.kind == "Service":
        related["EndpointSlice"] = client.list(by_kind("EndpointSlice"), ns)
    if kind.kind == "Pod":
        related["Service"] = client.list(by_kind("Service"), ns)
    for i, obj in enumerate(objs):
        obj.setdefault("kind", kind.kind)
        print(("\n" if i else "") + describe(obj, related), end="")
    return 0
