"""Test nodes for the datapath: BPF programs loaded on real veth pairs to real pod namespaces.

Shared by the datapath tests and the benchmarks (they exercise the same kernel paths)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from nodemesh.netns import host_ifname, netns_name
from nodemesh.policy.model import EndpointPolicy, PolicyKey, PolicyValue
from services.datapath.endpoints import PolicyWriter
from services.datapath.loader import Loader
from services.datapath.maps import Event, IPCacheValue
from services.datapath.pods.netns import PodLink, create_pod_netns, delete_pod_netns


@dataclass
class TPod:
    name: str
    link: PodLink
    ep_id: int
    identity: int

    @property
    def ns(self) -> str:
        return self.link.netns

    @property
    def ip(self) -> str:
        return self.link.ip


@dataclass
class TNode:
    """A simulated node: a Loader with pins under a per-test bpffs dir, pods, an event poller."""

    name: str
    pin_root: str
    defines: dict[str, int] = field(default_factory=dict)  # -D for bpf/nm_tc.c (map sizes, CT lifetimes)
    loader: Loader = field(init=False)
    writer: PolicyWriter = field(init=False)
    pods: list[TPod] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> TNode:
        self.loader = Loader(self.name, pin_root=self.pin_root, defines=self.defines)
        maps = self.loader.load()
        self.writer = PolicyWriter(maps)
        self.loader.open_events(self.events.append)
        self._stop.clear()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.loader.poll(50)

    def stop_agent(self) -> None:
        """What a crashed agent leaves: attached programs and pins, no process state."""
        self._stop.set()
        if self._thread:
            self._thread.join()
        self.loader.close()

    @property
    def maps(self):  # type: ignore[no-untyped-def]
        assert self.loader.maps is not None
        return self.loader.maps

    def add_pod(self, name: str, ip: str, identity: int, policy: EndpointPolicy | None = None) -> TPod:
        ns = netns_name(self.name, "default", name)
        link = create_pod_netns(ns, host_ifname(self.name, "default", name), ip)
        pod = TPod(name, link, ep_id=len(self.pods) + 1, identity=identity)
        self.pods.append(pod)
        self.set_policy(pod, policy or EndpointPolicy())
        self.maps.set_ipcache(f"{ip}/32", IPCacheValue(identity=identity))
        self.loader.attach(link.host_ifindex)
        return pod

    def restart_agent(self) -> None:
        """A new agent: compile again (reusing the pins) and re-attach every pod's veth."""
        self.start()
        for p in self.pods:
            self.loader.attach(p.link.host_ifindex)

    def set_policy(self, pod: TPod, policy: EndpointPolicy) -> None:
        self.writer.apply(pod.ep_id, policy)
        self.writer.set_endpoint(pod.link.host_ifindex, pod.ep_id, pod.identity, pod.ip, policy)

    def drops(self) -> dict[int, int]:
        return self.loader.drops()

    def close(self) -> None:
        for p in self.pods:
            delete_pod_netns(p.link.netns, p.link.host_ifname)
        if self.loader.is_loaded:
            self.stop_agent()


def ingress_policy(entries: dict[PolicyKey, PolicyValue], egress: bool = False) -> EndpointPolicy:
    return EndpointPolicy(ingress_enforced=True, egress_enforced=egress, entries=entries)
