"""``nodemesh exec POD [-n NS] [--node NODE] -- CMD…``: run a command in a pod's network namespace.

Like ``kubectl exec`` for local mode: the pod's netns name is derived from (node, namespace, pod)
exactly as the datapath names it, so no API call is needed; without ``--node`` every node of the
local cluster (``run/cluster.json``) is tried. The command runs through ``nsenter --net`` (not
``ip netns exec``, which would remount /sys), with this terminal's stdin/stdout/stderr.

Like ``kubectl exec``, which sees the container's /etc/resolv.conf, the command sees the resolv.conf the
datapath wrote for the pod (``nodes/<node>/pods/<ns>_<pod>.resolv.conf``, cluster DNS), bind-mounted over
/etc/resolv.conf in a private mount namespace as the pod's workload has it, so
``nodemesh exec POD -- curl http://svc.ns/`` resolves Service names. A pod with the host's DNS has no
such file and the command sees the host's.
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path

from localcluster.layout import load_cluster
from nodemesh.errors import NodemeshError
from nodemesh.netns import netns_exists, netns_name, netns_path, scope_for
from nodemesh.nodestate import read_datapath_state

__all__ = ["exec_argv", "find_netns", "register"]

# as the pod runner starts a workload: $0 is the pod's resolv.conf, the rest the command
_BIND_RESOLV = 'mount --bind "$0" /etc/resolv.conf && exec "$@"'


def find_netns(pod: str, namespace: str, nodes: list[tuple[str, str]]) -> str:
    """The path of the pod's netns on whichever of ``nodes`` ((node, scope) pairs) hosts it."""
    return _find(pod, namespace, nodes)[1]


def _find(pod: str, namespace: str, nodes: list[tuple[str, str]]) -> tuple[str, str]:
    """(node, netns path) of the pod on whichever of ``nodes`` ((node, scope) pairs) hosts it."""
    for node, scope in nodes:
        name = netns_name(node, namespace, pod, scope)
        if netns_exists(name):
            return node, netns_path(name)
    names = ", ".join(n for n, _ in nodes) or "any node"
    raise NodemeshError(f"pod {namespace}/{pod} has no network namespace on {names}")


def exec_argv(nsenter: str, netns: str, resolv_conf: Path | None, cmd: list[str]) -> list[str]:
    """The command line: into the pod's netns, and under the pod's resolv.conf when it has one."""
    enter = [nsenter, f"--net={netns}", "--"]
    if resolv_conf is None:
        return [*enter, *cmd]
    unshare = ["unshare", "--mount", "--propagation", "private", "--"]
    return [*enter, *unshare, "sh", "-c", _BIND_RESOLV, str(resolv_conf), *cmd]


def _scope(cluster_dir: str, node: str) -> str:
    """The node's naming scope, as its datapath recorded it (``nodes/<node>/datapath.json``)."""
    node_dir = Path(cluster_dir) / "nodes" / node
    state = read_datapath_state(node_dir)
    return state.scope if state is not None else scope_for(str(node_dir))


def _run(args: argparse.Namespace) -> int:
    cmd = list(args.cmd)
    # options may follow the pod (``exec POD -n NS -- CMD``): REMAINDER captured them, parse them here
    if "--" in cmd:
        i = cmd.index("--")
        opts, cmd = cmd[:i], cmd[i + 1 :]
        late = argparse.ArgumentParser(prog="nodemesh exec", add_help=False, exit_on_error=False)
        late.add_argument("-n", "--namespace", default=args.namespace)
        late.add_argument("--node", default=args.node)
        try:
            ns = late.parse_args(opts)
        except (argparse.ArgumentError, SystemExit) as e:
            raise NodemeshError(f"bad exec options {opts}: {e}") from e
        args.namespace, args.node = ns.namespace, ns.node
    if not cmd:
        raise NodemeshError("no command given: nodemesh exec POD -- CMD…")
    cluster = load_cluster(args.data_dir)
    names = [args.node] if args.node else [n.name for n in cluster.nodes]
    nodes = [(n, _scope(cluster.data_dir, n)) for n in names]
    node, path = _find(args.pod, args.namespace, nodes)
    nsenter = shutil.which("nsenter")
    if nsenter is None:
        raise NodemeshError("nsenter not found (util-linux)")
    resolv = Path(cluster.data_dir) / "nodes" / node / "pods" / f"{args.namespace}_{args.pod}.resolv.conf"
    argv = exec_argv(nsenter, path, resolv if resolv.is_file() else None, cmd)
    os.execv(nsenter, argv)
    return 0  # not reached


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("exec", help="run a command in a pod's network namespace (like kubectl exec)")
    p.add_argument("pod")
    p.add_argument("-n", "--namespace", default="default")
    p.add_argument("--node", default="", help="the pod's node (default: try every node of the local cluster)")
    p.add_argument("cmd", nargs=argparse.REMAINDER, help="-- CMD [ARGS…]")
    p.set_defaults(func=_run)
