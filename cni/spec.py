"""The CNI 1.0 contract, pure: environment, network configuration, results and errors.

A runtime (containerd, CRI-O) executes the plugin with ``CNI_COMMAND`` and the other ``CNI_*``
variables set and the network configuration on stdin; the plugin prints a result (ADD), nothing
(DEL, CHECK) or a version document (VERSION) on stdout, or an error document with a non-zero exit
code (SPEC.md "Error": ``{"cniVersion", "code", "msg", "details"}``).
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ERR_DECODE",
    "ERR_INCOMPATIBLE_VERSION",
    "ERR_INVALID_CONFIG",
    "ERR_INVALID_ENV",
    "ERR_IO",
    "ERR_TRY_AGAIN",
    "ERR_UNKNOWN_CONTAINER",
    "ERR_UNSUPPORTED_FIELD",
    "SUPPORTED_VERSIONS",
    "CniEnv",
    "CniError",
    "NetConf",
    "parse_conf",
    "parse_env",
    "prev_ipv4",
    "standalone_result",
    "version_info",
]

SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0")
DEFAULT_SOCKET = "/var/run/nodemesh/cni.sock"

ERR_INCOMPATIBLE_VERSION = 1
ERR_UNSUPPORTED_FIELD = 2
ERR_UNKNOWN_CONTAINER = 3
ERR_INVALID_ENV = 4
ERR_IO = 5
ERR_DECODE = 6
ERR_INVALID_CONFIG = 7
ERR_TRY_AGAIN = 11

_COMMANDS = ("ADD", "DEL", "CHECK", "VERSION")


class CniError(Exception):
    """An error the plugin reports to the runtime as a CNI error document."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code, self.msg, self.details = code, msg, details

    def document(self, cni_version: str = "1.0.0") -> dict[str, Any]:
        doc: dict[str, Any] = {"cniVersion": cni_version, "code": self.code, "msg": self.msg}
        if self.details:
            doc["details"] = self.details
        return doc


@dataclass(frozen=True)
class CniEnv:
    command: str
    container_id: str = ""
    netns: str = ""
    ifname: str = ""
    path: str = ""
    args: dict[str, str] = field(default_factory=dict)


def _parse_args(raw: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in raw.split(";"):
        if not part:
            continue
        k, sep, v = part.partition("=")
        if not sep or not k:
            raise CniError(ERR_INVALID_ENV, f"CNI_ARGS: {part!r} is not KEY=VALUE")
        out[k] = v
    return out


def parse_env(environ: Mapping[str, str]) -> CniEnv:
    """The ``CNI_*`` variables, checked for what each command needs (SPEC.md "Parameters")."""
    command = environ.get("CNI_COMMAND", "")
    if command not in _COMMANDS:
        raise CniError(ERR_INVALID_ENV, f"CNI_COMMAND must be one of {', '.join(_COMMANDS)}, got {command!r}")
    env = CniEnv(
        command=command,
        container_id=environ.get("CNI_CONTAINERID", ""),
        netns=environ.get("CNI_NETNS", ""),
        ifname=environ.get("CNI_IFNAME", ""),
        path=environ.get("CNI_PATH", ""),
        args=_parse_args(environ.get("CNI_ARGS", "")),
    )
    full = ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME")
    need: dict[str, tuple[str, ...]] = {"ADD": full, "CHECK": full, "DEL": ("CNI_CONTAINERID", "CNI_IFNAME")}
    missing = [v for v in need.get(command, ()) if not environ.get(v)]
    if missing:
        raise CniError(ERR_INVALID_ENV, f"{command} needs {', '.join(missing)}")
    return env


@dataclass(frozen=True)
class NetConf:
    cni_version: str
    name: str
    type: str
    socket: str = DEFAULT_SOCKET
    timeout: float = 60.0
    """Seconds to wait for the datapath to have the endpoint's policy in place."""
    prev_result: dict[str, Any] | None = None
    raw: dict[str, Any] = field(default_factory=dict)


def parse_conf(data: bytes, *, command: str = "ADD") -> NetConf:
    """The network configuration on stdin. VERSION may come with only ``cniVersion`` (or nothing)."""
    try:
        raw = json.loads(data.decode() or "{}")
    except (UnicodeDecodeError, ValueError) as e:
        raise CniError(ERR_DECODE, "network configuration on stdin is not JSON", str(e)) from None
    if not isinstance(raw, dict):
        raise CniError(ERR_DECODE, "network configuration on stdin is not a JSON object")
    version = raw.get("cniVersion", "1.0.0" if command == "VERSION" else None)
    if not isinstance(version, str):
        raise CniError(ERR_INVALID_CONFIG, "network configuration has no cniVersion")
    if version not in SUPPORTED_VERSIONS:
        raise CniError(
            ERR_INCOMPATIBLE_VERSION,
            f"cniVersion {version} is not supported",
            f"supported: {', '.join(SUPPORTED_VERSIONS)}",
        )
    if command == "VERSION":
        return NetConf(cni_version=version, name="", type="", raw=raw)
    for key in ("name", "type"):
        if not isinstance(raw.get(key), str) or not raw[key]:
            raise CniError(ERR_INVALID_CONFIG, f"network configuration needs a string {key!r}")
    socket = raw.get("socket", DEFAULT_SOCKET)
    timeout = raw.get("timeout", 60.0)
    if not isinstance(socket, str) or not socket.startswith("/"):
        raise CniError(ERR_INVALID_CONFIG, "'socket' must be an absolute path")
    if not isinstance(timeout, int | float) or isinstance(timeout, bool) or timeout <= 0:
        raise CniError(ERR_INVALID_CONFIG, "'timeout' must be a positive number of seconds")
    prev = raw.get("prevResult")
    if prev is not None and not isinstance(prev, dict):
        raise CniError(ERR_INVALID_CONFIG, "prevResult must be an object")
    if command == "CHECK" and version in ("0.3.0", "0.3.1"):
        raise CniError(ERR_INCOMPATIBLE_VERSION, f"CHECK needs cniVersion 0.4.0 or later, got {version}")
    return NetConf(
        cni_version=version,
        name=raw["name"],
        type=raw["type"],
        socket=socket,
        timeout=float(timeout),
        prev_result=prev,
        raw=raw,
    )


def version_info(cni_version: str) -> dict[str, Any]:
    return {"cniVersion": cni_version, "supportedVersions": list(SUPPORTED_VERSIONS)}


def prev_ipv4(prev: dict[str, Any]) -> str:
    """The first IPv4 address of a previous plugin's result (``ips[].address``, CIDR notation)."""
    ips = prev.get("ips")
    for entry in ips if isinstance(ips, list) else []:
        addr = entry.get("address") if isinstance(entry, dict) else None
        try:
            iface = ipaddress.ip_interface(str(addr))
        except ValueError:
            continue
        if iface.version == 4:
            return str(iface.ip)
    raise CniError(ERR_INVALID_CONFIG, "prevResult carries no IPv4 address (chained mode needs one)")


def standalone_result(
    cni_version: str, *, ifname: str, netns: str, ip: str, gateway: str, host_ifname: str, host_mac: str,
    pod_mac: str,
) -> dict[str, Any]:  # fmt: skip
    """The ADD result of a pod this plugin plumbed itself: host veth, pod interface, /32 and the
    default route through the link-local gateway."""
    address: dict[str, Any] = {"address": f"{ip}/32", "gateway": gateway, "interface": 1}
    if cni_version in ("0.3.0", "0.3.1", "0.4.0"):
        address["version"] = "4"
    return {
        "cniVersion": cni_version,
        "interfaces": [
            {"name": host_ifname, "mac": host_mac},
            {"name": ifname, "mac": pod_mac, "sandbox": netns},
        ],
        "ips": [address],
        "routes": [{"dst": "0.0.0.0/0", "gw": gateway}],
        "dns": {},
    }
