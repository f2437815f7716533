"""Fixtures for datapath tests: a simulated node (its own pins, loader and pods), cleaned up always."""

from __future__ import annotations

import os
import secrets
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from nodemesh.netns import host_ifname, netns_name
from nodemesh.policy.model import EndpointPolicy, PolicyKey, PolicyValue
from services.datapath.endpoints import PolicyWriter
from services.datapath.loader import Loader
from services.datapath.maps import Event, IPCacheValue, ip_to_be32
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
    loader: Loader = field(init=False)
    writer: PolicyWriter = field(init=False)
    pods: list[TPod] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> TNode:
        self.loader = Loader(self.name, pin_root=self.pin_root)
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
        if self.loader.bpf is not None:
            self.stop_agent()


def ingress_policy(entries: dict[PolicyKey, PolicyValue], egress: bool = False) -> EndpointPolicy:
    return EndpointPolicy(ingress_enforced=True, egress_enforced=egress, entries=entries)


@pytest.fixture
def pin_root() -> Iterator[str]:
    root = f"/sys/fs/bpf/nmtest-{os.getpid()}-{secrets.token_hex(3)}"
    os.makedirs(root)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def make_node(pin_root: str) -> Iterator[object]:
    nodes: list[TNode] = []
    token = secrets.token_hex(3)

    def make(suffix: str = "a") -> TNode:
        n = TNode(f"t{token}{suffix}", pin_root).start()
        nodes.append(n)
        return n

    try:
        yield make
    finally:
        for n in nodes:
            n.close()


__all__ = ["TNode", "TPod", "ingress_policy", "ip_to_be32"]


@pytest.fixture
def subnet() -> str:
    """A random /24 prefix ("10.x.y.") for this test's pods, away from local mode's 10.244.0.0/16."""
    import random

    return f"10.{random.randint(200, 250)}.{random.randint(0, 255)}."
