"""NATS users and least-privilege permissions: one user per service and per node (local mode).

:func:`local_auth` returns the nats-server ``authorization { users = [...] }`` block and the
credentials (``{user: {"user": …, "password": …}}``) the supervisor hands each process as
``NODEMESH_NATS_USER`` / ``NODEMESH_NATS_PASSWORD``. Permissions are derived from each service's
declaration (``services/<name>/cell.py``, a :class:`nodemesh.cell.Cell`), never listed here:
a subscription a cell does not declare is denied by nats-server.

Users: ``admin`` (everything; the CLI), one per central service (``watcher``, ``identity``,
``xds``, …) and, per node, ``<service>-<node>`` (``datapath-node-1``, ``authd-node-1``). The
apiserver does not speak NATS.

What the subject permissions guarantee (and tests/identity/test_natsauth.py proves):

* only ``authd-<node>`` may publish (request) on ``svid.sign.<node>``; the identity service trusts
  the node name in that subject because of this;
* node A's users cannot publish on node B's subjects (``auth.required/granted/revoked/events``,
  ``flows``, ``svid.sign``, ``auth.list``, ``local.pods``), nor write B's keys in the ``auth`` bucket
  (authd keys there must start with ``<token(node)>.``);
* only ``identity`` may write the ``identities``, ``ipcache``, ``nodes`` and ``trust`` buckets and
  publish on ``identity.events``, ``ipcache.events`` and ``trust.bundle``;
* only ``watcher`` may publish ``k8s.obj.*``/``k8s.synced`` (the cluster state everyone trusts).

Replies use ``allow_responses`` (a user may answer a request it received, once) instead of publish
rights on ``_INBOX.>``, so nobody can forge a reply to somebody else's request.

JetStream's API is coarser than subjects: a stream is read through API subjects named after the
*stream*, not the message subject (``$JS.API.CONSUMER.CREATE.<stream>``, ``…STREAM.MSG.GET.<stream>``),
so a user allowed to read a stream can read all of it. No service user may create, update, delete,
purge or seal a stream or bucket, nor delete its messages: streams are provisioned once by the admin
step (``nodemesh.streams.provision`` as ``admin``), and services only check that they exist
(``STREAM.INFO``). See docs/security.md.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterable
from pathlib import Path

import msgspec

from nodemesh.cell import Cell
from nodemesh.streams import BUCKETS, STREAMS

__all__ = [
    "ADMIN",
    "Permissions",
    "cell_permissions",
    "kv_stream",
    "kv_subject",
    "local_auth",
    "render_authorization",
    "user_permissions",
]

ADMIN = "admin"
JS_API = "$JS.API"


def kv_stream(bucket: str) -> str:
    """The stream that backs a KV bucket."""
    return f"KV_{bucket}"


def kv_subject(bucket: str, key: str = ">") -> str:
    """The subject a KV put/create/delete of ``key`` is published on (``>``: every key)."""
    return f"$KV.{bucket}.{key}"


class Permissions(msgspec.Struct, frozen=True, kw_only=True):
    """One user's allow lists (nats-server denies everything not listed)."""

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    allow_responses: bool = True


# --- building blocks ---------------------------------------------------------------------------
def _provisioned() -> list[str]:
    """What :func:`nodemesh.streams.wait_provisioned` needs at every service's start: info only."""
    out = [f"{JS_API}.INFO", f"{JS_API}.STREAM.NAMES"]
    for s in STREAMS:
        out.append(f"{JS_API}.STREAM.INFO.{s.name}")
    for b in BUCKETS:
        out.append(f"{JS_API}.STREAM.INFO.{kv_stream(b.name)}")
    return out


def _read_stream(stream: str) -> list[str]:
    """Read a stream (and so a KV bucket): get messages, create/delete consumers, ack, flow control."""
    api = JS_API
    return [
        f"{api}.STREAM.INFO.{stream}",
        f"{api}.STREAM.MSG.GET.{stream}",
        f"{api}.DIRECT.GET.{stream}",
        f"{api}.DIRECT.GET.{stream}.>",
        f"{api}.CONSUMER.CREATE.{stream}",
        f"{api}.CONSUMER.CREATE.{stream}.>",
        f"{api}.CONSUMER.DURABLE.CREATE.{stream}.>",
        f"{api}.CONSUMER.INFO.{stream}.>",
        f"{api}.CONSUMER.DELETE.{stream}.>",
        f"{api}.CONSUMER.MSG.NEXT.{stream}.>",
        f"$JS.ACK.{stream}.>",
        f"$JS.FC.{stream}.>",
    ]


def _read_kv(*buckets: str) -> list[str]:
    out: list[str] = []
    for b in buckets:
        out += _read_stream(kv_stream(b))
    return out


# Every service: the runtime's micro service ($SRV.PING/INFO/STATS) and replies to its own requests.
_COMMON_SUB = ("_INBOX.>", "$SRV.>")


def _perms(publish: Iterable[str], subscribe: Iterable[str]) -> Permissions:
    pub = list(dict.fromkeys([*_provisioned(), *publish]))
    sub = list(dict.fromkeys([*_COMMON_SUB, *subscribe]))
    return Permissions(publish=tuple(pub), subscribe=tuple(sub))


def cell_permissions(cell: Cell, node: str = "") -> Permissions:
    """One service's NATS permissions, derived from its :class:`~nodemesh.cell.Cell` (pure)."""
    c = cell.for_node(node) if cell.per_node else cell
    reads: list[str] = []
    for stream in c.reads_streams:
        reads += _read_stream(stream)
    reads += _read_kv(*c.reads_buckets)
    writes = [kv_subject(w.bucket, w.keys) for w in c.writes]
    return _perms([*c.publishes, *writes, *c.js_api, *reads], c.subscribes)


def user_permissions(cells: Iterable[Cell], nodes: Iterable[str]) -> dict[str, Permissions]:
    """Username → permissions for a cluster running these services on these nodes (pure).

    ``admin`` (the CLI) may do everything; every service gets exactly what its cell declares, per
    node for per-node services.
    """
    nodes = list(nodes)
    users: dict[str, Permissions] = {ADMIN: Permissions(publish=(">",), subscribe=(">",))}
    for cell in cells:
        for node in nodes if cell.per_node else [""]:
            users[cell.user(node)] = cell_permissions(cell, node)
    return users


# --- rendering ---------------------------------------------------------------------------------
def _q(s: str) -> str:
    # Quoted: an unquoted `$JS…` would be a variable reference in nats-server config syntax.
    return json.dumps(s)


def render_authorization(users: dict[str, tuple[str, Permissions]]) -> str:
    """The nats-server ``authorization`` block for ``{user: (password, permissions)}``."""
    lines = ["authorization {", "  users = ["]
    for name, (password, p) in users.items():
        pub = ", ".join(_q(s) for s in p.publish)
        sub = ", ".join(_q(s) for s in p.subscribe)
        resp = ", allow_responses: true" if p.allow_responses else ""
        lines.append(
            f"    {{user: {_q(name)}, password: {_q(password)}, permissions: {{"
            f"publish: {{allow: [{pub}]}}, subscribe: {{allow: [{sub}]}}{resp}}}}}"
        )
    lines += ["  ]", "}", ""]
    return "\n".join(lines)


def _credentials_path(data_dir: str) -> Path:
    return Path(data_dir) / "run" / "credentials.json"


def local_auth(
    cells: Iterable[Cell], nodes: list[str], data_dir: str
) -> tuple[str, dict[str, dict[str, str]]]:
    """(authorization config text, credentials) for a local cluster of ``cells`` on ``nodes``.

    Passwords already in ``<data_dir>/run/credentials.json`` are kept (a supervisor restart must
    not lock out running processes); missing users get a fresh random password. The file is
    (re)written with mode 0600.
    """
    path = _credentials_path(data_dir)
    old: dict[str, dict[str, str]] = {}
    try:
        loaded = json.loads(path.read_text())
        if isinstance(loaded, dict):
            old = {
                k: v for k, v in loaded.items() if isinstance(v, dict) and isinstance(v.get("password"), str)
            }
    except (OSError, ValueError):
        old = {}
    perms = user_permissions(cells, nodes)
    creds: dict[str, dict[str, str]] = {}
    for name in perms:
        password = old.get(name, {}).get("password") or secrets.token_urlsafe(24)
        creds[name] = {"user": name, "password": password}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(creds, fh, indent=2, sort_keys=True)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    config = render_authorization({n: (creds[n]["password"], perms[n]) for n in perms})
    return config, creds
