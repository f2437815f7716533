"""``nodemesh identity list|get ID``, ``nodemesh ipcache list``, ``nodemesh trust bundle|rotate``.

Read straight from the KV buckets the identity service owns (``identities``, ``ipcache``,
``trust``) with the CLI's admin credentials; ``trust rotate`` asks the service over
``identity.ca.rotate``. A corrupt KV entry is reported on stderr and skipped, never fatal.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, TextIO

import msgspec
from nats.js.errors import NotFoundError
from nats.js.kv import KV_DEL, KV_PURGE

from meshctl.natsopts import add_nats_options, connect_cli
from nodemesh import subjects
from nodemesh.bus import Bus
from nodemesh.codec import decode
from nodemesh.errors import DecodeError, NodemeshError
from nodemesh.messages.identity import CaRotateReply, CaRotateRequest, Identity, IPCacheEntry, TrustBundle
from nodemesh.streams import (
    BUCKET_IDENTITIES,
    BUCKET_IPCACHE,
    BUCKET_TRUST,
    IDENTITY_KEY_PREFIX,
    TRUST_BUNDLE_KEY,
    identity_key,
)

__all__ = ["register", "render_identities", "render_identity", "render_ipcache"]


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    ident = sub.add_parser("identity", help="security identities (numbers, labels, references)")
    isub = ident.add_subparsers(dest="identity_cmd", metavar="CMD", required=True)
    lst = isub.add_parser("list", help="every identity")
    _common(lst)
    lst.set_defaults(func=_identity_list)
    get = isub.add_parser("get", help="one identity: labels, references, nodes")
    get.add_argument("id", type=int)
    _common(get)
    get.set_defaults(func=_identity_get)

    ipc = sub.add_parser("ipcache", help="IP → identity map")
    psub = ipc.add_subparsers(dest="ipcache_cmd", metavar="CMD", required=True)
    plst = psub.add_parser("list", help="every ipcache entry")
    _common(plst)
    plst.set_defaults(func=_ipcache_list)

    trust = sub.add_parser("trust", help="SPIFFE trust bundle and CA")
    tsub = trust.add_subparsers(dest="trust_cmd", metavar="CMD", required=True)
    bundle = tsub.add_parser("bundle", help="print the trust bundle (PEM)")
    _common(bundle, output=False)
    bundle.set_defaults(func=_trust_bundle)
    rotate = tsub.add_parser(
        "rotate", help="rotate the CA (the old root stays trusted until its SVIDs expire)"
    )
    rotate.add_argument("--reason", default="nodemesh trust rotate")
    _common(rotate, output=False)
    rotate.set_defaults(func=_trust_rotate)


def _common(p: argparse.ArgumentParser, *, output: bool = True) -> None:
    p.add_argument("--data-dir", dest="sub_data_dir", default=None, help="local cluster state directory")
    add_nats_options(p)
    if output:
        p.add_argument("-o", "--output", choices=("table", "json"), default="table")


# --- rendering (pure) --------------------------------------------------------------------------------
def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    lines = [
        "   ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in [header, *rows]
    ]
    return "\n".join(lines) + "\n"


def _short(label: str) -> str:
    return label.removeprefix("k8s:")


def _nodes(ident: Identity) -> list[str]:
    return sorted({r.split("/", 1)[0] for r in ident.refs})


def render_identities(idents: list[Identity]) -> str:
    rows = []
    for i in sorted(idents, key=lambda x: x.id):
        labels = ", ".join(
            _short(lbl) for lbl in i.labels if not lbl.startswith("k8s:io.cilium.k8s.namespace.labels")
        )
        rows.append([str(i.id), labels, str(len(i.refs)), ",".join(_nodes(i)) or "-"])
    return _table(["ID", "LABELS", "REFS", "NODES"], rows)


def render_identity(i: Identity) -> str:
    out = [f"ID:         {i.id}{' (reserved)' if i.reserved else ''}", "Labels:"]
    out += [f"  {lbl}" for lbl in i.labels]
    out.append(f"References: {len(i.refs)}")
    out += [f"  {r}" for r in i.refs]
    out.append(f"Nodes:      {', '.join(_nodes(i)) or '-'}")
    if i.unused_since:
        out.append(f"Unused since: {i.unused_since:.0f} (unix)")
    return "\n".join(out) + "\n"


def render_ipcache(entries: list[IPCacheEntry], identities: dict[int, Identity]) -> str:
    rows = []
    for e in sorted(entries, key=lambda x: (x.node, x.ip)):
        ident = identities.get(e.identity)
        name = ident.labels[0].removeprefix("reserved:") if ident is not None and ident.reserved else ""
        rows.append(
            [
                f"{e.ip}/{e.prefix_len}",
                f"{e.identity}{f' ({name})' if name else ''}",
                e.node or "-",
                f"{e.namespace}/{e.pod}" if e.pod else "-",
            ]
        )
    return _table(["IP", "IDENTITY", "NODE", "POD"], rows)


# --- I/O -------------------------------------------------------------------------------------------
async def _bus(args: argparse.Namespace) -> Bus:
    bus, _ = await connect_cli(args, "nodemesh-cli")
    return bus


async def read_bucket(bus: Bus, bucket: str, tp: type[Any], prefix: str = "") -> dict[str, Any]:
    """Every live key of a bucket decoded as ``tp`` (corrupt entries reported on stderr, skipped).

    The read ends at the entry whose ``delta`` is 0 (the last key at the time of the read). The
    client's "initial values done" marker (``None``) is not trusted on its own: nats-py derives it
    from a consumer-info reply that can overtake the first deliveries, so a non-empty bucket could
    read as empty. It ends the read only when the stream holds no message under the filter. Deletes
    are watched too, so the key whose message comes last is always delivered, even a deleted one.
    """
    try:
        kv = await bus.kv(bucket)
    except NotFoundError as e:
        raise NodemeshError(f"KV bucket {bucket} does not exist (is the identity service running?)") from e
    keys = f"{prefix}>" if prefix else ">"
    watcher = await kv.watch(keys)
    out: dict[str, Any] = {}
    try:
        while True:
            entry = await watcher.updates(timeout=10)
            if entry is None:
                if await _bucket_empty(bus, bucket, keys):
                    break
                continue  # the values are on their way
            if entry.operation in (KV_DEL, KV_PURGE):
                out.pop(entry.key, None)
            else:
                try:
                    out[entry.key] = decode(entry.value or b"", tp, subject=entry.key)
                except DecodeError as e:
                    print(f"warning: skipping corrupt {bucket} entry {entry.key}: {e}", file=sys.stderr)
            if entry.delta == 0:
                break
    finally:
        await watcher.stop()
    return out


async def _bucket_empty(bus: Bus, bucket: str, keys: str) -> bool:
    """True if no key under ``keys`` has a message (deleted keys' markers count: they are delivered)."""
    info = await bus.js.stream_info(f"KV_{bucket}", subjects_filter=f"$KV.{bucket}.{keys}")
    return not info.state.subjects


def _dump(values: list[Any], out: TextIO) -> None:
    for v in values:
        out.write(json.dumps(msgspec.to_builtins(v), sort_keys=True) + "\n")


async def _identity_list(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    bus = await _bus(args)
    try:
        idents = list(
            (await read_bucket(bus, BUCKET_IDENTITIES.name, Identity, IDENTITY_KEY_PREFIX)).values()
        )
    finally:
        await bus.nc.close()
    idents.sort(key=lambda i: i.id)
    if args.output == "json":
        _dump(list(idents), out)
    else:
        out.write(render_identities(idents))
    return 0


async def _identity_get(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    bus = await _bus(args)
    try:
        kv = await bus.kv(BUCKET_IDENTITIES.name)
        try:
            entry = await kv.get(identity_key(args.id))
        except NotFoundError as e:
            raise NodemeshError(f"identity {args.id} not found") from e
        try:
            ident = decode(entry.value or b"", Identity, subject=f"id.{args.id}")
        except DecodeError as e:
            raise NodemeshError(f"identity {args.id}: corrupt KV entry: {e}") from e
    finally:
        await bus.nc.close()
    if args.output == "json":
        _dump([ident], out)
    else:
        out.write(render_identity(ident))
    return 0


async def _ipcache_list(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    bus = await _bus(args)
    try:
        entries: list[IPCacheEntry] = list(
            (await read_bucket(bus, BUCKET_IPCACHE.name, IPCacheEntry)).values()
        )
        idents = {
            i.id: i
            for i in (await read_bucket(bus, BUCKET_IDENTITIES.name, Identity, IDENTITY_KEY_PREFIX)).values()
        }
    finally:
        await bus.nc.close()
    if args.output == "json":
        _dump(list(sorted(entries, key=lambda e: (e.node, e.ip))), out)
    else:
        out.write(render_ipcache(entries, idents))
    return 0


async def _trust_bundle(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    bus = await _bus(args)
    try:
        kv = await bus.kv(BUCKET_TRUST.name)
        entry = await kv.get(TRUST_BUNDLE_KEY)
        bundle = decode(entry.value or b"", TrustBundle, subject="trust.bundle")
    except NotFoundError as e:
        raise NodemeshError("no trust bundle published yet (is the identity service running?)") from e
    except DecodeError as e:
        raise NodemeshError(f"the trust bundle in KV is corrupt: {e}") from e
    finally:
        await bus.nc.close()
    out.write("".join(bundle.roots_pem))
    return 0


async def _trust_rotate(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    bus = await _bus(args)
    try:
        reply = await bus.request(
            subjects.IDENTITY_CA_ROTATE, CaRotateRequest(reason=args.reason), CaRotateReply, timeout=30
        )
    finally:
        await bus.nc.close()
    b = reply.bundle
    out.write(
        f"new root {reply.new_root_fingerprint[:16]}…; previous root trusted until "
        f"{reply.old_root_kept_until:.0f} (bundle revision {b.revision}, {len(b.roots_pem)} roots)\n"
    )
    return 0
