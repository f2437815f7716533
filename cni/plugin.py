"""``nodemesh-cni``: the CNI plugin that hands a pod to the node's datapath.

Two modes, as Cilium's: **chained** (the configuration has a ``prevResult``: another plugin made the
veth and assigned the address; this one finds the host side of the veth from the pod's interface —
generic-veth — and registers it) and **standalone** (no ``prevResult``: the datapath creates the veth
into ``CNI_NETNS`` and assigns the address from the node's pod CIDR). Either way ADD returns only once
the datapath has the endpoint's policy, its endpoint entry and the tc programs in place, so the pod
never runs unenforced; a datapath that cannot be reached fails ADD (fail closed, code 11: the runtime
retries). DEL succeeds even with the datapath down: the standalone veth is deleted here, and a
restarted datapath forgets endpoints whose veth is gone. A second DEL is a no-op.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from typing import IO, Any

import msgspec

from cni.client import DatapathUnreachable, call
from cni.netlink import delete_host_link, find_host_veth, pod_has_ipv4
from cni.spec import (
    ERR_IO,
    ERR_TRY_AGAIN,
    CniEnv,
    CniError,
    NetConf,
    parse_conf,
    parse_env,
    prev_ipv4,
    standalone_result,
    version_info,
)
from nodemesh.messages.cni import EndpointReply, EndpointRequest
from nodemesh.netns import cni_host_ifname

__all__ = ["main", "run"]


def _request(env: CniEnv, conf: NetConf, **kw: Any) -> EndpointRequest:
    return EndpointRequest(
        command=env.command,  # type: ignore[arg-type]
        container_id=env.container_id,
        netns=env.netns,
        ifname=env.ifname,
        pod_namespace=env.args.get("K8S_POD_NAMESPACE", ""),
        pod_name=env.args.get("K8S_POD_NAME", ""),
        pod_uid=env.args.get("K8S_POD_UID", ""),
        **kw,
    )


def _ask(conf: NetConf, req: EndpointRequest) -> EndpointReply:
    try:
        reply = call(conf.socket, req, conf.timeout + 5)
    except DatapathUnreachable as e:
        raise CniError(ERR_TRY_AGAIN, "the nodemesh datapath on this node is not reachable", str(e)) from None
    except (OSError, msgspec.DecodeError) as e:
        raise CniError(ERR_IO, "talking to the nodemesh datapath failed", str(e)) from None
    if not reply.ok:
        raise CniError(reply.code or ERR_IO, reply.msg or "the datapath refused the request", reply.details)
    return reply


def _add(env: CniEnv, conf: NetConf) -> dict[str, Any]:
    if conf.prev_result is not None:  # chained
        ip = prev_ipv4(conf.prev_result)
        host_idx, host_name = find_host_veth(env.netns, env.ifname)
        _ask(conf, _request(env, conf, mode="chained", ip=ip, host_ifindex=host_idx, host_ifname=host_name))
        return {**conf.prev_result, "cniVersion": conf.cni_version}
    r = _ask(conf, _request(env, conf, mode="standalone"))
    return standalone_result(
        conf.cni_version, ifname=env.ifname, netns=env.netns, ip=r.ip, gateway=r.gateway,
        host_ifname=r.host_ifname, host_mac=r.host_mac, pod_mac=r.pod_mac,
    )  # fmt: skip


def _del(env: CniEnv, conf: NetConf) -> None:
    mode = "chained" if conf.prev_result is not None else "standalone"
    try:
        _ask(conf, _request(env, conf, mode=mode))
    except CniError as e:
        if e.code != ERR_TRY_AGAIN:
            raise
        # The datapath is down: undo what is ours on the host. A standalone veth is named from the
        # container id alone; a chained veth belongs to the previous plugin, whose DEL runs next. The
        # endpoint entry left in the pinned map is swept by the restarted datapath (its veth is gone).
        delete_host_link(cni_host_ifname(env.container_id))


def _check(env: CniEnv, conf: NetConf) -> None:
    if conf.prev_result is None:
        raise CniError(7, "CHECK needs prevResult (the result of ADD)")
    ip = prev_ipv4(conf.prev_result)
    if not pod_has_ipv4(env.netns, env.ifname, ip):
        raise CniError(100, f"{env.ifname} in {env.netns} does not have {ip}")
    host_idx, host_name = find_host_veth(env.netns, env.ifname)
    _ask(conf, _request(env, conf, mode="chained", ip=ip, host_ifindex=host_idx, host_ifname=host_name))


def run(environ: Mapping[str, str], stdin: bytes) -> tuple[int, dict[str, Any] | None]:
    """Exit code and the document to print (None: print nothing)."""
    version = "1.0.0"
    try:
        env = parse_env(environ)
        conf = parse_conf(stdin, command=env.command)
        version = conf.cni_version
        if env.command == "VERSION":
            return 0, version_info(version)
        if env.command == "ADD":
            return 0, _add(env, conf)
        if env.command == "DEL":
            _del(env, conf)
        else:
            _check(env, conf)
        return 0, None
    except CniError as e:
        return 1, e.document(version)
    except Exception as e:  # never a traceback instead of a CNI error document
        return 1, CniError(ERR_IO, f"{type(e).__name__}: {e}").document(version)


def main(argv: list[str] | None = None, stdin: IO[bytes] | None = None, stdout: IO[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["install"]:
        from cni.install import main as install_main

        return install_main(args[1:])
    data = (stdin or sys.stdin.buffer).read() if os.environ.get("CNI_COMMAND") else b""
    code, doc = run(os.environ, data)
    if doc is not None:
        out = stdout or sys.stdout
        out.write(json.dumps(doc) + "\n")
        out.flush()
    return code
