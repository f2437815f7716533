"""The DNS core (zone + responder) on wire-format queries, parsed back with dnspython as a client would.

Every record type and response code the server gives: A/AAAA for Services (ClusterIP, headless,
dual-stack), endpoint host names, SRV, PTR, CNAME (ExternalName), pod names, TXT/SOA/NS, NXDOMAIN and
NODATA with the SOA, SERVFAIL before the sync, FORMERR/NOTIMP/BADVERS/REFUSED, forwarding decisions,
truncation over UDP, and the answer cache following every change.
"""

from __future__ import annotations

import random

import dns.edns
import dns.flags
import dns.message
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import pytest

from services.dns.answer import Drop, Forward, Reply, Responder
from services.dns.zone import Zone
from testkit.k8sobjects import endpoint, endpoint_slice, namespace, service

DB_PORTS = [("pg", 5432, "TCP")]


def load(zone: Zone, *objs: dict[str, object]) -> None:
    for o in objs:
        meta = o["metadata"]
        assert isinstance(meta, dict)
        ns = "" if o["kind"] == "Namespace" else str(meta.get("namespace", ""))
        zone.apply(str(o["kind"]), False, ns, str(meta["name"]), o)  # type: ignore[arg-type]


@pytest.fixture
def zone() -> Zone:
    z = Zone("cluster.local", ttl=5)
    load(
        z,
        namespace("demo"),
        namespace("kube-system"),
        namespace("empty"),
        service("echo-b", ports=[("http", 80, "TCP"), ("", 8080, "TCP"), ("metrics", 9090, "UDP")]),
        service("db", ip=None, ports=DB_PORTS),
        endpoint_slice(
            "db-abc",
            "db",
            [
                endpoint("10.244.1.5", hostname="db-0"),
                endpoint("10.244.2.6"),
                endpoint("10.244.2.7", ready=False),
                endpoint("10.244.2.8", ready=None),  # unset condition: ready
            ],
            ports=DB_PORTS,
        ),
        service("ext", ip=None, type="ExternalName", externalName="example.org"),
        service("dual", ip="10.96.0.30", clusterIPs=["10.96.0.30", "fd00::30"]),
        service("kube-dns", ns="kube-system", ip="10.96.0.10", ports=[("dns", 53, "UDP")]),
    )
    z.synced = True
    return z


@pytest.fixture
def r(zone: Zone) -> Responder:
    return Responder(zone)


def query(name: str, rdtype: str, payload: int | None = None) -> dns.message.Message:
    """A query as a stub resolver sends it: EDNS only when a payload size is given."""
    if payload:
        return dns.message.make_query(name, rdtype, use_edns=0, payload=payload)
    return dns.message.make_query(name, rdtype)


def ask(
    r: Responder, name: str, rdtype: str = "A", *, tcp: bool = False, payload: int | None = None
) -> dns.message.Message:
    q = query(name, rdtype, payload)
    out = r.handle(q.to_wire(), tcp)
    assert isinstance(out, Reply), out
    resp = dns.message.from_wire(out.wire)
    assert resp.id == q.id and resp.flags & dns.flags.QR
    assert out.rcode == resp.rcode()
    return resp


def answers(resp: dns.message.Message, rdtype: str = "A") -> list[str]:
    t = dns.rdatatype.from_text(rdtype)
    return sorted(rd.to_text() for rrset in resp.answer if rrset.rdtype == t for rd in rrset)


def soa_in_authority(resp: dns.message.Message) -> bool:
    return any(
        rr.rdtype == dns.rdatatype.SOA and rr.name.to_text() == "cluster.local." for rr in resp.authority
    )


# --- positive answers ------------------------------------------------------------------------------
def test_clusterip_service_a(r: Responder) -> None:
    resp = ask(r, "echo-b.demo.svc.cluster.local")
    assert resp.rcode() == dns.rcode.NOERROR and resp.flags & dns.flags.AA and resp.flags & dns.flags.RA
    assert answers(resp) == ["10.96.0.20"]
    assert resp.answer[0].ttl == 5


def test_names_are_case_insensitive_and_the_question_is_echoed(r: Responder) -> None:
    resp = ask(r, "Echo-B.DEMO.svc.Cluster.Local.")
    assert answers(resp) == ["10.96.0.20"]
    assert resp.answer[0].name.to_text() == "Echo-B.DEMO.svc.Cluster.Local."


def test_headless_service_answers_ready_endpoints(r: Responder) -> None:
    assert answers(ask(r, "db.demo.svc.cluster.local")) == ["10.244.1.5", "10.244.2.6", "10.244.2.8"]


def test_headless_publish_not_ready_addresses(zone: Zone) -> None:
    load(zone, service("db", ip=None, ports=DB_PORTS, publishNotReadyAddresses=True))
    resp = ask(Responder(zone), "db.demo.svc.cluster.local")
    assert "10.244.2.7" in answers(resp)


def test_headless_endpoint_hostnames(r: Responder) -> None:
    assert answers(ask(r, "db-0.db.demo.svc.cluster.local")) == ["10.244.1.5"]
    assert answers(ask(r, "10-244-2-6.db.demo.svc.cluster.local")) == ["10.244.2.6"]
    assert ask(r, "10-244-2-7.db.demo.svc.cluster.local").rcode() == dns.rcode.NXDOMAIN  # not ready


def test_dual_stack_service_answers_aaaa(r: Responder) -> None:
    assert answers(ask(r, "dual.demo.svc.cluster.local")) == ["10.96.0.30"]
    assert answers(ask(r, "dual.demo.svc.cluster.local", "AAAA"), "AAAA") == ["fd00::30"]


def test_srv_for_named_ports_of_a_clusterip_service(r: Responder) -> None:
    resp = ask(r, "_http._tcp.echo-b.demo.svc.cluster.local", "SRV")
    assert answers(resp, "SRV") == ["0 100 80 echo-b.demo.svc.cluster.local."]
    glue = [(rr.name.to_text(), rd.to_text()) for rr in resp.additional for rd in rr]
    assert glue == [("echo-b.demo.svc.cluster.local.", "10.96.0.20")]
    assert answers(ask(r, "_metrics._udp.echo-b.demo.svc.cluster.local", "SRV"), "SRV") == [
        "0 100 9090 echo-b.demo.svc.cluster.local."
    ]
    # the protocol is part of the name; an unnamed port has no SRV name
    assert ask(r, "_metrics._tcp.echo-b.demo.svc.cluster.local", "SRV").rcode() == dns.rcode.NXDOMAIN


def test_srv_of_a_headless_service_names_each_endpoint(r: Responder) -> None:
    resp = ask(r, "_pg._tcp.db.demo.svc.cluster.local", "SRV")
    assert answers(resp, "SRV") == [
        "0 33 5432 10-244-2-6.db.demo.svc.cluster.local.",
        "0 33 5432 10-244-2-8.db.demo.svc.cluster.local.",
        "0 33 5432 db-0.db.demo.svc.cluster.local.",
    ]
    assert sorted(rd.to_text() for rr in resp.additional for rd in rr) == [
        "10.244.1.5",
        "10.244.2.6",
        "10.244.2.8",
    ]


def test_srv_parent_names_exist_without_records(r: Responder) -> None:
    resp = ask(r, "_tcp.echo-b.demo.svc.cluster.local", "SRV")
    assert resp.rcode() == dns.rcode.NOERROR and not resp.answer and soa_in_authority(resp)


def test_ptr_for_cluster_ip_and_headless_endpoint(r: Responder) -> None:
    resp = ask(r, "20.0.96.10.in-addr.arpa", "PTR")
    assert answers(resp, "PTR") == ["echo-b.demo.svc.cluster.local."]
    assert answers(ask(r, "5.1.244.10.in-addr.arpa", "PTR"), "PTR") == ["db-0.db.demo.svc.cluster.local."]


def test_external_name_is_a_cname(r: Responder) -> None:
    resp = ask(r, "ext.demo.svc.cluster.local")
    assert answers(resp, "CNAME") == ["example.org."] and answers(resp) == []


def test_cname_inside_the_zone_is_followed(zone: Zone) -> None:
    load(zone, service("alias", ip=None, type="ExternalName", externalName="echo-b.demo.svc.cluster.local"))
    resp = ask(Responder(zone), "alias.demo.svc.cluster.local")
    assert answers(resp, "CNAME") == ["echo-b.demo.svc.cluster.local."]
    assert answers(resp) == ["10.96.0.20"]


def test_pod_names(r: Responder) -> None:
    assert answers(ask(r, "10-244-1-9.demo.pod.cluster.local")) == ["10.244.1.9"]
    assert ask(r, "10-244-1.demo.pod.cluster.local").rcode() == dns.rcode.NXDOMAIN
    assert ask(r, "999-1-1-1.demo.pod.cluster.local").rcode() == dns.rcode.NXDOMAIN


def test_zone_apex_schema_version_and_ns(r: Responder) -> None:
    soa = ask(r, "cluster.local", "SOA")
    assert answers(soa, "SOA")[0].startswith("ns.dns.cluster.local. hostmaster.cluster.local.")
    assert answers(ask(r, "cluster.local", "NS"), "NS") == ["ns.dns.cluster.local."]
    assert answers(ask(r, "ns.dns.cluster.local")) == ["10.96.0.10"]  # kube-dns' ClusterIP
    assert answers(ask(r, "dns-version.cluster.local", "TXT"), "TXT") == ['"1.1.0"']


def test_any_returns_every_record_at_the_name(r: Responder) -> None:
    resp = ask(r, "dual.demo.svc.cluster.local", "ANY")
    assert answers(resp) == ["10.96.0.30"] and answers(resp, "AAAA") == ["fd00::30"]


# --- negative answers ----------------------------------------------------------------------------
def test_unknown_name_is_nxdomain_with_soa(r: Responder) -> None:
    for name in (
        "nope.demo.svc.cluster.local",
        "echo-b.nope.svc.cluster.local",
        "x.echo-b.demo.svc.cluster.local",
        "echo-b.cluster.local",
        "a.b.c.d.e.svc.cluster.local",
    ):
        resp = ask(r, name)
        assert resp.rcode() == dns.rcode.NXDOMAIN, name
        assert resp.flags & dns.flags.AA and soa_in_authority(resp), name
        soa = next(rr for rr in resp.authority if rr.rdtype == dns.rdatatype.SOA)
        assert soa.ttl == 5 and soa[0].minimum == 5


def test_aaaa_of_an_ipv4_service_is_nodata(r: Responder) -> None:
    resp = ask(r, "echo-b.demo.svc.cluster.local", "AAAA")
    assert resp.rcode() == dns.rcode.NOERROR and not resp.answer and soa_in_authority(resp)


def test_existing_intermediate_names_are_nodata(r: Responder) -> None:
    for name in (
        "svc.cluster.local",
        "demo.svc.cluster.local",
        "empty.svc.cluster.local",
        "demo.pod.cluster.local",
    ):
        resp = ask(r, name)
        assert resp.rcode() == dns.rcode.NOERROR and not resp.answer and soa_in_authority(resp), name
    assert ask(r, "unknown.svc.cluster.local").rcode() == dns.rcode.NXDOMAIN


def test_search_path_expansions_are_nxdomain(r: Responder) -> None:
    # what a pod's resolver tries first with ndots:5 (search demo.svc.cluster.local …)
    resp = ask(r, "echo-b.demo.svc.cluster.local.demo.svc.cluster.local")
    assert resp.rcode() == dns.rcode.NXDOMAIN


# --- errors ------------------------------------------------------------------------------------
def test_before_sync_cluster_names_are_servfail_not_nxdomain(zone: Zone) -> None:
    zone.synced = False
    r = Responder(zone)
    q = dns.message.make_query("echo-b.demo.svc.cluster.local", "A", use_edns=0)
    out = r.handle(q.to_wire())
    assert isinstance(out, Reply) and out.rcode == dns.rcode.SERVFAIL
    resp = dns.message.from_wire(out.wire)
    ede = [o for o in resp.options if isinstance(o, dns.edns.EDEOption)]
    assert ede and ede[0].code == dns.edns.EDECode.NOT_READY
    zone.synced = True
    assert answers(ask(r, "echo-b.demo.svc.cluster.local")) == ["10.96.0.20"]  # nothing cached


def test_names_outside_the_zone_are_forwarded(r: Responder) -> None:
    for name, rdtype in (
        ("example.com", "A"),
        ("cluster.local.example.com", "A"),
        ("9.9.9.9.in-addr.arpa", "PTR"),
    ):
        q = dns.message.make_query(name, rdtype)
        wire = q.to_wire()
        out = r.handle(wire)
        assert isinstance(out, Forward) and out.wire == wire and out.query.id == q.id, name


def test_garbage_is_formerr_or_dropped(r: Responder) -> None:
    q = dns.message.make_query("echo-b.demo.svc.cluster.local", "A").to_wire()
    assert r.handle(b"") == Drop("malformed")
    assert r.handle(b"\x12\x34\x01") == Drop("malformed")
    response = dns.message.make_response(dns.message.from_wire(q)).to_wire()
    assert r.handle(response) == Drop("not_a_query")  # never answer an answer
    for bad in (q[:-3], q + b"junk", q[:12] + b"\xc0\x0c" + q[14:], q[:12] + b"\x3f" + b"a" * 20):
        out = r.handle(bad)
        assert isinstance(out, Reply) and out.rcode == dns.rcode.FORMERR and out.bad == "malformed", bad
        resp = dns.message.from_wire(out.wire)
        assert resp.id == dns.message.from_wire(q).id and resp.rcode() == dns.rcode.FORMERR
    big = r.handle(q[:12] + b"\x00" * 5000)
    assert isinstance(big, Reply) and big.rcode == dns.rcode.FORMERR and big.bad == "oversized"


def test_random_mutations_never_raise(r: Responder) -> None:
    rng = random.Random(1234)
    seeds = [
        dns.message.make_query(n, t, use_edns=e).to_wire()
        for n, t, e in (
            ("echo-b.demo.svc.cluster.local", "A", None),
            ("_pg._tcp.db.demo.svc.cluster.local", "SRV", 0),
        )
    ]
    for _ in range(3000):
        wire = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 6)):
            op = rng.random()
            i = rng.randrange(len(wire))
            if op < 0.6:
                wire[i] = rng.randrange(256)
            elif op < 0.8:
                del wire[i]
            else:
                wire.insert(i, rng.randrange(256))
        out = r.handle(bytes(wire), rng.random() < 0.5)
        assert isinstance(out, Reply | Forward | Drop)


def test_other_opcodes_are_notimp(r: Responder) -> None:
    q = dns.message.make_query("echo-b.demo.svc.cluster.local", "A")
    q.set_opcode(dns.opcode.NOTIFY)
    out = r.handle(q.to_wire())
    assert isinstance(out, Reply) and out.rcode == dns.rcode.NOTIMP


def test_question_count_other_than_one_is_formerr(r: Responder) -> None:
    q = dns.message.make_query("echo-b.demo.svc.cluster.local", "A")
    q.question = []
    out = r.handle(q.to_wire())
    assert isinstance(out, Reply) and out.rcode == dns.rcode.FORMERR


def test_unknown_edns_version_is_badvers(r: Responder) -> None:
    q = dns.message.make_query("echo-b.demo.svc.cluster.local", "A", use_edns=1)
    out = r.handle(q.to_wire())
    assert isinstance(out, Reply) and out.rcode == dns.rcode.BADVERS
    assert dns.message.from_wire(out.wire).rcode() == dns.rcode.BADVERS


def test_zone_transfers_and_other_classes_are_refused(r: Responder) -> None:
    axfr = dns.message.make_query("cluster.local", "AXFR")
    chaos = dns.message.make_query("echo-b.demo.svc.cluster.local", "TXT", rdclass=dns.rdataclass.CH)
    for q in (axfr, chaos):
        out = r.handle(q.to_wire())
        assert isinstance(out, Reply) and out.rcode == dns.rcode.REFUSED


# --- size ----------------------------------------------------------------------------------------
@pytest.fixture
def big(zone: Zone) -> Responder:
    """``big``: 100 endpoints (1.6 kB of A records); ``mid``: 60 (fits 1232 bytes, not 512)."""
    for name, n in (("big", 100), ("mid", 60)):
        eps = [endpoint(f"10.{n}.3.{i}") for i in range(1, n + 1)]
        load(
            zone,
            service(name, ip=None, ports=DB_PORTS),
            endpoint_slice(f"{name}-1", name, eps, ports=DB_PORTS),
        )
    return Responder(zone)


def raw(r: Responder, name: str, *, tcp: bool = False, payload: int | None = None) -> bytes:
    q = query(name, "A", payload)
    out = r.handle(q.to_wire(), tcp)
    assert isinstance(out, Reply)
    return out.wire


def test_udp_answers_too_big_are_truncated_and_tcp_gets_all(big: Responder) -> None:
    mid = "mid.demo.svc.cluster.local"
    plain = raw(big, mid)
    assert len(plain) <= 512 and dns.message.from_wire(plain).flags & dns.flags.TC
    edns = raw(big, mid, payload=4096)
    assert 512 < len(edns) <= 1232 and not dns.message.from_wire(edns).flags & dns.flags.TC
    assert len(answers(dns.message.from_wire(edns))) == 60
    capped = raw(big, "big.demo.svc.cluster.local", payload=4096)  # at most our 1232 over UDP
    assert len(capped) <= 1232 and dns.message.from_wire(capped).flags & dns.flags.TC
    tcp = ask(big, "big.demo.svc.cluster.local", tcp=True)
    assert not tcp.flags & dns.flags.TC and len(answers(tcp)) == 100


def test_srv_glue_that_does_not_fit_is_left_out_without_tc(big: Responder) -> None:
    zone = big.zone
    eps = [endpoint(f"10.244.4.{i}") for i in range(1, 9)]
    load(zone, service("few", ip=None, ports=DB_PORTS), endpoint_slice("few-1", "few", eps, ports=DB_PORTS))
    resp = ask(Responder(zone), "_pg._tcp.few.demo.svc.cluster.local", "SRV")
    assert len(answers(resp, "SRV")) == 8 and not resp.flags & dns.flags.TC
    assert len(resp.additional) < 8  # glue partly dropped, the answer whole


# --- cache and changes ------------------------------------------------------------------------------
def test_cached_answer_gets_the_new_id_and_follows_changes(zone: Zone) -> None:
    r = Responder(zone)
    q1 = dns.message.make_query("echo-b.demo.svc.cluster.local", "A")
    first = r.handle(q1.to_wire())
    q2 = dns.message.make_query("echo-b.demo.svc.cluster.local", "A")
    q2.id = (q1.id + 1) % 65536
    second = r.handle(q2.to_wire())
    assert isinstance(first, Reply) and isinstance(second, Reply)
    assert not first.cached and second.cached
    assert dns.message.from_wire(second.wire).id == q2.id
    assert answers(dns.message.from_wire(second.wire)) == ["10.96.0.20"]
    load(zone, service("echo-b", ip="10.96.0.99"))
    third = r.handle(q2.to_wire())
    assert isinstance(third, Reply) and not third.cached
    assert answers(dns.message.from_wire(third.wire)) == ["10.96.0.99"]


def test_deletes_and_slice_changes(zone: Zone) -> None:
    r = Responder(zone)
    zone.apply(
        "EndpointSlice", False, "demo", "db-abc", endpoint_slice("db-abc", "db", [endpoint("10.244.9.9")])
    )
    assert answers(ask(r, "db.demo.svc.cluster.local")) == ["10.244.9.9"]
    assert ask(r, "db-0.db.demo.svc.cluster.local").rcode() == dns.rcode.NXDOMAIN
    assert answers(ask(r, "9.9.244.10.in-addr.arpa", "PTR"), "PTR") == [
        "10-244-9-9.db.demo.svc.cluster.local."
    ]
    gone = dns.message.make_query("5.1.244.10.in-addr.arpa", "PTR")
    assert isinstance(r.handle(gone.to_wire()), Forward)  # no longer ours: the upstreams may know it
    zone.apply("EndpointSlice", True, "demo", "db-abc", {})
    resp = ask(r, "db.demo.svc.cluster.local")
    assert resp.rcode() == dns.rcode.NOERROR and not resp.answer  # the Service stays: NODATA
    zone.apply("Service", True, "demo", "echo-b", {})
    assert ask(r, "echo-b.demo.svc.cluster.local").rcode() == dns.rcode.NXDOMAIN
    assert isinstance(r.handle(dns.message.make_query("20.0.96.10.in-addr.arpa", "PTR").to_wire()), Forward)


def test_slice_before_its_service(zone: Zone) -> None:
    load(zone, endpoint_slice("late-1", "late", [endpoint("10.244.5.5", hostname="h")]))
    r = Responder(zone)
    assert ask(r, "late.demo.svc.cluster.local").rcode() == dns.rcode.NXDOMAIN
    load(zone, service("late", ip=None))
    assert answers(ask(r, "h.late.demo.svc.cluster.local")) == ["10.244.5.5"]


def test_malformed_objects_are_counted_not_raised(zone: Zone) -> None:
    before = zone.rejected
    zone.apply("Service", False, "demo", "bad", {"spec": "garbage"})
    zone.apply("EndpointSlice", False, "demo", "bad", {"metadata": {"labels": "x"}, "endpoints": "x"})
    bad2 = {
        "metadata": {"labels": {"kubernetes.io/service-name": "db"}},
        "endpoints": [5, {"addresses": "x"}, {"addresses": ["nope"]}],
        "ports": [{"port": "x"}, 7],
    }
    zone.apply("EndpointSlice", False, "demo", "bad2", bad2)
    zone.apply("Service", False, "demo", "x" * 70, {"spec": {"clusterIP": "10.96.0.77"}})  # label too long
    zone.apply("Service", False, "demo", "weird", {"spec": {"clusterIP": "not-an-ip", "ports": "p"}})
    assert zone.rejected == before + 3
    r = Responder(zone)
    assert answers(ask(r, "db.demo.svc.cluster.local")) == ["10.244.1.5", "10.244.2.6", "10.244.2.8"]
    resp = ask(r, "weird.demo.svc.cluster.local")
    assert resp.rcode() == dns.rcode.NOERROR and not resp.answer


def _cached(r: Responder, name: str, rdtype: str = "A") -> tuple[bool, dns.message.Message]:
    out = r.handle(query(name, rdtype).to_wire())
    assert isinstance(out, Reply)
    return out.cached, dns.message.from_wire(out.wire)


def test_a_change_drops_only_the_answers_it_touches(zone: Zone) -> None:
    r = Responder(zone)
    names = ["echo-b.demo.svc.cluster.local", "db.demo.svc.cluster.local", "new.demo.svc.cluster.local"]
    for n in names:
        _cached(r, n)
    assert [_cached(r, n)[0] for n in names] == [True, True, True]
    load(zone, endpoint_slice("db-abc", "db", [endpoint("10.244.7.7")]), service("new", ip="10.96.0.77"))
    hit, echo = _cached(r, names[0])
    assert hit and answers(echo) == ["10.96.0.20"]  # untouched: still served from the cache
    hit, db = _cached(r, names[1])
    assert not hit and answers(db) == ["10.244.7.7"]
    hit, new = _cached(r, names[2])
    assert not hit and answers(new) == ["10.96.0.77"]  # a cached NXDOMAIN does not outlive the Service


def test_names_that_start_existing_drop_their_negative_answers(zone: Zone) -> None:
    r = Responder(zone)
    for name in ("fresh.svc.cluster.local", "fresh.pod.cluster.local", "_tcp.web.fresh.svc.cluster.local"):
        assert _cached(r, name)[1].rcode() == dns.rcode.NXDOMAIN
        assert _cached(r, name)[0]
    load(zone, service("web", ns="fresh", ip="10.96.0.88", ports=[("http", 80, "TCP")]))
    for name in ("fresh.svc.cluster.local", "fresh.pod.cluster.local", "_tcp.web.fresh.svc.cluster.local"):
        hit, resp = _cached(r, name)
        assert not hit and resp.rcode() == dns.rcode.NOERROR and not resp.answer, name
    zone.apply("Service", True, "fresh", "web", {})
    assert _cached(r, "fresh.svc.cluster.local")[1].rcode() == dns.rcode.NXDOMAIN


def test_answers_through_a_cname_follow_the_target(zone: Zone) -> None:
    load(zone, service("alias", ip=None, type="ExternalName", externalName="echo-b.demo.svc.cluster.local"))
    r = Responder(zone)
    assert answers(_cached(r, "alias.demo.svc.cluster.local")[1]) == ["10.96.0.20"]
    load(zone, service("echo-b", ip="10.96.0.21"))
    hit, resp = _cached(r, "alias.demo.svc.cluster.local")
    assert not hit and answers(resp) == ["10.96.0.21"]
    kube_dns = _cached(r, "ns.dns.cluster.local")[1]
    assert answers(kube_dns) == ["10.96.0.10"]
    load(zone, service("kube-dns", ns="kube-system", ip="10.96.0.11"))
    assert answers(_cached(r, "ns.dns.cluster.local")[1]) == ["10.96.0.11"]


def test_cache_size_is_bounded(zone: Zone) -> None:
    r = Responder(zone, cache_entries=10)
    for i in range(25):
        _cached(r, f"n{i}.demo.svc.cluster.local")
        assert r.cached <= 10
    off = Responder(zone, cache_entries=0)
    for _ in range(2):
        hit, resp = _cached(off, "echo-b.demo.svc.cluster.local")
        assert not hit and answers(resp) == ["10.96.0.20"]
