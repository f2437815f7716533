"""Every NATS subject nodemesh uses, built by functions — the only place a subject string is formatted.

Layout (``<node>`` is a node name, ``<kind>`` a lower-case Kubernetes kind):

==============================================  =========================  =================================
subject                                         carried by                 payload (nodemesh.messages.*)
==============================================  =========================  =================================
``k8s.obj.<kind>.<namespace>.<name>``           stream K8S (last value)    k8s.ObjectEvent
``k8s.synced``                                  stream K8S (last value)    k8s.Synced
``k8s.status.<kind>.<namespace>.<name>``        stream STATUS (work queue) k8s.StatusPatch
``k8s.write.<kind>.<namespace>.<name>``         request/reply (operator)   k8s.ObjectWrite/WriteResult
``identity.allocate`` / ``identity.release``    request/reply, queue       identity.*
``identity.events``                             stream EVENTS              identity.IdentityEvent
``ipcache.events``                              stream EVENTS              identity.IPCacheEvent
``svid.sign.<node>``                            request/reply, queue       identity.SvidRequest/SvidReply
``identity.ca.rotate``                          request/reply (admin)      identity.CaRotateRequest/Reply
``trust.bundle``                                stream EVENTS              identity.TrustBundle
``auth.required.<node>``                        core NATS                  auth.AuthRequired
``auth.granted.<node>`` / ``auth.revoked.<node>`` core NATS                auth.AuthVerdict
``auth.events.<node>``                          core NATS                  auth.AuthEvent
``auth.list.<node>``                            request/reply              auth.*
``flows.<node>``                                core NATS + stream FLOWS   flow.Flow
``xds.ack.<node>``                              core NATS                  xds.XdsAck
``xds.status``                                  request/reply, queue       xds.XdsStatusRequest/Reply
==============================================  =========================  =================================

Names and namespaces may contain dots, which NATS treats as token separators, so every token taken from
user data goes through :func:`token`, which maps ``.`` to ``~`` (a character Kubernetes names never contain).
"""

from __future__ import annotations

__all__ = [
    "AUTH_ALL_EVENTS",
    "FLOWS_ALL",
    "IDENTITY_ALLOCATE",
    "IDENTITY_CA_ROTATE",
    "IDENTITY_EVENTS",
    "IDENTITY_RELEASE",
    "IPCACHE_EVENTS",
    "K8S_OBJ_ALL",
    "K8S_STATUS_ALL",
    "K8S_SYNCED",
    "K8S_WRITE_ALL",
    "SVID_SIGN_ALL",
    "TRUST_BUNDLE",
    "XDS_STATUS",
    "auth_events",
    "auth_granted",
    "auth_list",
    "auth_required",
    "auth_revoked",
    "flows",
    "k8s_kind",
    "k8s_node_status",
    "k8s_object",
    "k8s_status",
    "k8s_write",
    "parse_k8s_status",
    "parse_k8s_write",
    "svid_sign",
    "token",
    "untoken",
    "xds_ack",
]

_EMPTY = "_"


def token(value: str) -> str:
    """Turn user data (a name, namespace or node) into one NATS subject token."""
    if not value:
        return _EMPTY
    return value.replace(".", "~")


def untoken(tok: str) -> str:
    """Inverse of :func:`token`."""
    if tok == _EMPTY:
        return ""
    return tok.replace("~", ".")


# --- Kubernetes objects (watcher → everyone) -------------------------------------------------
K8S_OBJ_ALL = "k8s.obj.>"
K8S_SYNCED = "k8s.synced"
K8S_STATUS_ALL = "k8s.status.>"
K8S_WRITE_ALL = "k8s.write.>"


def k8s_object(kind: str, namespace: str, name: str) -> str:
    """Subject of one object's events; the K8S stream keeps only the last message per subject."""
    return f"k8s.obj.{kind.lower()}.{token(namespace)}.{token(name)}"


def k8s_kind(kind: str) -> str:
    """Wildcard over every object of one kind."""
    return f"k8s.obj.{kind.lower()}.>"


def k8s_status(kind: str, namespace: str, name: str) -> str:
    """Status patch for one object, applied by the active watcher."""
    return f"k8s.status.{kind.lower()}.{token(namespace)}.{token(name)}"


def k8s_node_status(node: str, kind: str, namespace: str, name: str) -> str:
    """Status patch sent by ``node``'s agent (NATS lets only that node's users publish it): the
    watcher applies it only to an object on ``node`` (a Pod's ``spec.nodeName``)."""
    return f"k8s.status.from.{token(node)}.{kind.lower()}.{token(namespace)}.{token(name)}"


def parse_k8s_status(subject: str) -> tuple[str, str, str, str] | None:
    """``(node, kind lower-case, namespace, name)`` of a status subject (node "" when not bound to
    a sender); None for anything else."""
    parts = subject.split(".")
    if parts[:2] != ["k8s", "status"]:
        return None
    if len(parts) == 7 and parts[2] == "from":
        return untoken(parts[3]), parts[4], untoken(parts[5]), untoken(parts[6])
    if len(parts) == 5:
        return "", parts[2], untoken(parts[3]), untoken(parts[4])
    return None


def k8s_write(kind: str, namespace: str, name: str) -> str:
    """Object write (create, patch, delete, status) the operator asks the active watcher to make."""
    return f"k8s.write.{kind.lower()}.{token(namespace)}.{token(name)}"


def parse_k8s_write(subject: str) -> tuple[str, str, str] | None:
    """``(kind lower-case, namespace, name)`` of a write subject; None for anything else."""
    parts = subject.split(".")
    if parts[:2] != ["k8s", "write"] or len(parts) != 5:
        return None
    return parts[2], untoken(parts[3]), untoken(parts[4])


# --- identity service --------------------------------------------------------------------------
IDENTITY_ALLOCATE = "identity.allocate"
IDENTITY_RELEASE = "identity.release"
IDENTITY_EVENTS = "identity.events"
IPCACHE_EVENTS = "ipcache.events"
TRUST_BUNDLE = "trust.bundle"
SVID_SIGN_ALL = "svid.sign.*"
IDENTITY_CA_ROTATE = "identity.ca.rotate"  # request/reply: start a CA rotation (admin only)


def svid_sign(node: str) -> str:
    """CSR → SVID requests of one node; NATS permissions let only that node's user publish here."""
    return f"svid.sign.{token(node)}"


# --- mutual authentication ----------------------------------------------------------------------
AUTH_ALL_EVENTS = "auth.events.*"


def auth_required(node: str) -> str:
    return f"auth.required.{token(node)}"


def auth_granted(node: str) -> str:
    return f"auth.granted.{token(node)}"


def auth_revoked(node: str) -> str:
    return f"auth.revoked.{token(node)}"


def auth_events(node: str) -> str:
    return f"auth.events.{token(node)}"


def auth_list(node: str) -> str:
    return f"auth.list.{token(node)}"


# --- flows ---------------------------------------------------------------------------------------
FLOWS_ALL = "flows.*"


def flows(node: str) -> str:
    return f"flows.{token(node)}"


# --- xds -----------------------------------------------------------------------------------------
XDS_STATUS = "xds.status"


def xds_ack(node: str) -> str:
    return f"xds.ack.{token(node)}"
