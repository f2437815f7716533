"""Local mode: run a pod's first container as a process in the pod's netns, probe it, report status.

There is no container runtime: the image maps to a command (:func:`.images.image_command`),
started with ``nsenter --net=/run/netns/<ns>`` (which, unlike ``ip netns exec``, leaves /sys alone)
in its own session, with the container's env (downward-API ``fieldRef``s resolved), stdout/stderr
appended to ``<data-dir>/pods/<ns>_<name>.log``. Pods share the host's filesystem, so the resolv.conf
kubelet would give the pod (:mod:`.resolvconf`) is written to ``<data-dir>/pods/<ns>_<name>.resolv.conf``
and bind-mounted over /etc/resolv.conf in a private mount namespace of the workload's own
(``unshare --mount``; the mount dies with the workload and never shows on the host), removed with the
pod. ``restartPolicy`` is honoured with exponential
backoff (1 s doubling to 30 s, as CrashLoopBackOff). Readiness: a ``tcpSocket`` or ``httpGet`` probe
run from inside the netns; without a probe the pod is ready while its process runs. Status goes out
through ``report`` only when it changes (phase, podIP, Ready/ContainersReady conditions,
containerStatuses), so the API server's EndpointSlice controller follows real readiness.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from nodemesh.netns import netns_path
from services.datapath.pods.images import image_command
from services.datapath.pods.netns import netns_socket
from services.datapath.pods.resolvconf import PodDns, pod_resolv_conf

__all__ = ["PodRunner", "container_env", "probe_once", "workload_base_env"]

log = logging.getLogger("nodemesh.datapath.runner")
Report = Callable[[dict[str, Any]], Awaitable[None]]
# Before a pod's first start: waits for what must be in place (services/datapath/authgate.py) and
# returns a pod condition that says how that went.
Gate = Callable[[], Awaitable[dict[str, str]]]
HOST_RESOLV_CONF = "/etc/resolv.conf"
# Runs inside the workload's new mount namespace: $0 is the pod's file, "$@" the workload's argv
# (exec keeps the pid, so the pid file and adoption still name the workload itself).
_BIND_RESOLV = 'mount --bind "$0" /etc/resolv.conf && exec "$@"'


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def container_env(pod: dict[str, Any], container: dict[str, Any], pod_ip: str, node: str) -> dict[str, str]:
    """The container's env: literal values and downward-API fieldRefs (name, namespace, podIP, node)."""
    meta = pod.get("metadata") or {}
    fields = {
        "metadata.name": str(meta.get("name", "")),
        "metadata.namespace": str(meta.get("namespace", "default")),
        "metadata.uid": str(meta.get("uid", "")),
        "status.podIP": pod_ip,
        "spec.nodeName": node,
        "spec.serviceAccountName": str((pod.get("spec") or {}).get("serviceAccountName", "default")),
    }
    env: dict[str, str] = {}
    for item in container.get("env") or []:
        if not isinstance(item, dict) or not item.get("name"):
            continue
        if "value" in item:
            env[str(item["name"])] = str(item["value"])
            continue
        ref = ((item.get("valueFrom") or {}).get("fieldRef") or {}).get("fieldPath")
        if ref in fields:
            env[str(item["name"])] = fields[ref]
    return env


def _pid_alive(pid: int) -> bool:
    """True if ``pid`` runs (a zombie does not count)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


def workload_base_env() -> dict[str, str]:
    """The agent's environment minus its own settings: a workload must never inherit the agent's NATS
    credentials. ``NODEMESH_CLUSTER_DATA_DIR`` stays: it marks the process as the cluster's, so
    ``nodemesh down`` finds and stops it."""
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("NODEMESH_") or k == "NODEMESH_CLUSTER_DATA_DIR"
    }


def _port(container: dict[str, Any], port: Any) -> int:
    if isinstance(port, int):
        return port
    for p in container.get("ports") or []:
        if p.get("name") == port:
            return int(p.get("containerPort", 0))
    return int(port)


def probe_once(netns: str, ip: str, container: dict[str, Any], probe: dict[str, Any], timeout: float) -> bool:
    """One readiness check from inside the pod's netns (blocking; run it in a thread)."""
    try:
        if "tcpSocket" in probe:
            port = _port(container, probe["tcpSocket"].get("port"))
            s = netns_socket(netns)
            with s:
                s.settimeout(timeout)
                s.connect((ip, port))
            return True
        if "httpGet" in probe:
            hg = probe["httpGet"]
            port = _port(container, hg.get("port"))
            s = netns_socket(netns)
            with s:
                s.settimeout(timeout)
                s.connect((ip, port))
                s.sendall(f"GET {hg.get('path', '/')} HTTP/1.0\r\nHost: {ip}\r\n\r\n".encode())
                line = s.recv(64).split(b"\r\n", 1)[0].split()
            return len(line) >= 2 and 200 <= int(line[1]) < 400
    except (OSError, ValueError):
        return False
    return True  # exec probes are not supported locally: treated as passing


class PodRunner:
    """Runs, restarts, probes and reports one pod (local mode)."""

    def __init__(
        self,
        pod: dict[str, Any],
        netns: str,
        ip: str,
        node: str,
        log_dir: Path,
        report: Report,
        dns: PodDns | None = None,
        gate: Gate | None = None,
    ) -> None:
        self.pod = pod
        self.gate = gate
        self.conditions: list[dict[str, str]] = []  # the gate's condition, reported with the others
        self.netns = netns
        self.ip = ip
        self.node = node
        meta = pod.get("metadata") or {}
        self.key = f"{meta.get('namespace', 'default')}/{meta.get('name', '')}"
        raw_spec = pod.get("spec")
        spec: dict[str, Any] = raw_spec if isinstance(raw_spec, dict) else {}
        containers = spec.get("containers")
        first = containers[0] if isinstance(containers, list) and containers else {}
        self.container: dict[str, Any] = first if isinstance(first, dict) else {}
        self.restart_policy = str(spec.get("restartPolicy") or "Always")
        self.log_path = log_dir / f"{meta.get('namespace', 'default')}_{meta.get('name', '')}.log"
        self.pid_path = self.log_path.with_suffix(".pid")
        self.resolv_path = self.log_path.with_suffix(".resolv.conf")
        self.dns = dns
        self.uid = str(meta.get("uid", ""))
        self.pid = 0  # the workload's pid (its process group), ours or adopted from a previous agent
        self.report = report
        self.proc: asyncio.subprocess.Process | None = None
        self.restarts = 0
        self.ready = False
        self.started_at = ""
        self.exit_code: int | None = None
        self.waiting = ""
        self._last: dict[str, Any] | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"pod:{self.key}")

    async def stop(self) -> None:
        """The pod is gone: stop the workload."""
        await self.detach()
        await self._kill()
        self.pid_path.unlink(missing_ok=True)
        self.resolv_path.unlink(missing_ok=True)

    async def detach(self) -> None:
        """The agent stops: leave the workload running (a restarted agent adopts it, as a kubelet
        restart leaves containers running)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    def _alive(self) -> bool:
        if self.proc is not None:
            return self.proc.returncode is None
        return bool(self.pid) and _pid_alive(self.pid)

    async def _kill(self) -> None:
        if not self._alive():
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGTERM)
        for _ in range(100):
            if not self._alive():
                break
            await asyncio.sleep(0.05)
        else:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pid, signal.SIGKILL)
        if self.proc is not None:
            await self.proc.wait()

    def _adoptable(self) -> int:
        """The pid of this pod's workload left running by a previous agent, if any."""
        try:
            pid_s, uid = self.pid_path.read_text().split()
            pid = int(pid_s)
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except (OSError, ValueError):
            return 0
        marker = f"NODEMESH_POD_UID={self.uid}".encode()
        return pid if uid == self.uid and marker in environ and _pid_alive(pid) else 0

    async def _wait_exit(self) -> int:
        if self.proc is not None:
            return await self.proc.wait()
        while _pid_alive(self.pid):  # adopted: not our child, poll it
            await asyncio.sleep(0.5)
        return -1

    def argv(self) -> list[str]:
        c = self.container
        command, args = c.get("command") or [], c.get("args") or []
        if not isinstance(command, list) or not isinstance(args, list):
            return []
        return image_command(str(c.get("image", "")), [str(x) for x in command], [str(x) for x in args])

    def command(self, argv: list[str]) -> list[str]:
        """The full command line: into the pod's netns, and under its own resolv.conf if it has one."""
        enter = ["nsenter", f"--net={netns_path(self.netns)}", "--"]
        if self.dns is None:
            return [*enter, *argv]
        try:
            host = Path(HOST_RESOLV_CONF).read_text()
        except OSError:
            host = ""
        text = pod_resolv_conf(self.pod, self.dns, host)
        if text is None:
            return [*enter, *argv]
        self.resolv_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.resolv_path.with_name(self.resolv_path.name + ".tmp")
        tmp.write_text(text)
        tmp.chmod(0o644)
        tmp.replace(self.resolv_path)
        unshare = ["unshare", "--mount", "--propagation", "private", "--"]
        return [*enter, *unshare, "sh", "-c", _BIND_RESOLV, str(self.resolv_path), *argv]

    async def _run(self) -> None:
        backoff = 1.0
        adopt = self._adoptable()
        if not adopt and self.gate is not None:
            # The pod's IP goes out first (as the kubelet reports it once the sandbox is up): its
            # identity and ipcache entry derive from it, and the gate waits on what follows from them.
            self.waiting = "ContainerCreating"
            await self._publish(phase="Pending")
            try:
                self.conditions = [await self.gate()]
            except Exception as e:  # a broken gate must not keep the pod from ever starting
                log.exception("start gate failed", extra={"pod": self.key})
                self.conditions = [
                    {
                        "type": "nodemesh.io/AuthReady",
                        "status": "False",
                        "reason": "GateError",
                        "message": str(e),
                    }
                ]
        while True:
            if adopt:
                self.pid, self.proc, adopt = adopt, None, 0
                log.info("adopted running workload", extra={"pod": self.key, "pid": self.pid})
                code = await self._supervise()
                if not await self._after_exit(code, backoff):
                    return
                backoff = min(backoff * 2, 30.0)
                continue
            argv = self.argv()
            if not argv:
                self.waiting = "no command for image"
                await self._publish(phase="Failed")
                return
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            env = {**workload_base_env(), **container_env(self.pod, self.container, self.ip, self.node)}
            env["NODEMESH_POD_UID"] = self.uid  # lets a restarted agent recognise (adopt) the process
            with open(self.log_path, "ab") as out:  # noqa: ASYNC230 - a local append, opened once per start
                try:
                    self.proc = await asyncio.create_subprocess_exec(
                        *self.command(argv),
                        stdout=out,
                        stderr=out,
                        stdin=asyncio.subprocess.DEVNULL,
                        env=env,
                        cwd=str(self.container.get("workingDir") or "/"),
                        start_new_session=True,
                    )
                except (OSError, ValueError) as e:
                    self.waiting = f"cannot start: {e}"
                    await self._publish(phase="Failed")
                    return
            self.pid = self.proc.pid
            self.pid_path.write_text(f"{self.pid} {self.uid}")
            code = await self._supervise()
            if not await self._after_exit(code, backoff):
                return
            backoff = min(backoff * 2, 30.0)

    async def _supervise(self) -> int:
        """Running until the workload exits: status, readiness probes; returns the exit code."""
        self.started_at, self.waiting, self.exit_code = _now(), "", None
        await self._publish(phase="Running")
        probe_task = asyncio.create_task(self._probe_loop())
        try:
            return await self._wait_exit()
        finally:
            probe_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await probe_task

    async def _after_exit(self, code: int, backoff: float) -> bool:
        """Apply restartPolicy; True = start it again (after the backoff)."""
        self.ready, self.exit_code = False, code
        log.info("container exited", extra={"pod": self.key, "code": code})
        if self.restart_policy == "Never" or (self.restart_policy == "OnFailure" and code == 0):
            await self._publish(phase="Succeeded" if code == 0 else "Failed")
            return False
        self.restarts += 1
        self.waiting = "CrashLoopBackOff"
        await self._publish(phase="Running")
        await asyncio.sleep(backoff)
        return True

    async def _probe_loop(self) -> None:
        probe = self.container.get("readinessProbe")
        if not probe:
            self.ready = True
            await self._publish(phase="Running")
            return
        await asyncio.sleep(float(probe.get("initialDelaySeconds", 0)))
        period = float(probe.get("periodSeconds", 10))
        timeout = float(probe.get("timeoutSeconds", 1))
        ok_needed, fail_needed = int(probe.get("successThreshold", 1)), int(probe.get("failureThreshold", 3))
        oks = fails = 0
        while True:
            ok = await asyncio.to_thread(probe_once, self.netns, self.ip, self.container, probe, timeout)
            oks, fails = (oks + 1, 0) if ok else (0, fails + 1)
            if ok and oks >= ok_needed and not self.ready:
                self.ready = True
                await self._publish(phase="Running")
            elif not ok and self.ready and fails >= fail_needed:
                self.ready = False
                await self._publish(phase="Running")
            # until first ready, probe quickly so a new pod joins its Service without waiting a period
            await asyncio.sleep(period if self.ready else min(period, 0.5))

    def status(self, phase: str) -> dict[str, Any]:
        ready = "True" if self.ready else "False"
        name = str(self.container.get("name", "main"))
        if self._alive():
            state: dict[str, Any] = {"running": {"startedAt": self.started_at}}
        elif self.waiting:
            state = {"waiting": {"reason": self.waiting}}
        else:
            state = {"terminated": {"exitCode": self.exit_code if self.exit_code is not None else -1}}
        now = _now()
        return {
            "phase": phase,
            "podIP": self.ip,
            "podIPs": [{"ip": self.ip}],
            "conditions": [
                {"type": "PodScheduled", "status": "True"},
                {"type": "Initialized", "status": "True"},
                {"type": "ContainersReady", "status": ready, "lastTransitionTime": now},
                {"type": "Ready", "status": ready, "lastTransitionTime": now},
                *({**c, "lastTransitionTime": now} for c in self.conditions),
            ],
            "containerStatuses": [
                {
                    "name": name,
                    "image": str(self.container.get("image", "")),
                    "ready": self.ready,
                    "started": state.get("running") is not None,
                    "restartCount": self.restarts,
                    "state": state,
                }
            ],
        }

    async def _publish(self, phase: str) -> None:
        st = self.status(phase)
        # compare without timestamps: report only real changes
        cmp = {
            **st,
            "conditions": [
                {k: v for k, v in c.items() if k != "lastTransitionTime"} for c in st["conditions"]
            ],
        }
        if cmp == self._last:
            return
        self._last = cmp
        try:
            await self.report(st)
        except Exception:
            log.exception("status report failed", extra={"pod": self.key})
