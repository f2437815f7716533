"""A DNS query in wire format → the answer, a forward, or a drop (pure; the I/O is in server.py).

The slow path parses the query with dnspython, asks the :class:`~services.dns.zone.Zone`, and builds
the response with dnspython. The fast path is why one core serves tens of thousands of queries per
second: an answer built once is kept, keyed by the query bytes after the 2-byte ID (flags, counts,
question and any EDNS record, exactly as the client sent them) per transport, and replayed with the
client's ID in front. The key holds everything the answer depends on besides the zone, so a hit is
exactly the answer the slow path would build; a zone change drops the answers of the names it
changed (and only those).

Rules, as an authoritative server for the cluster domain with recursion through forwarding:

* not a query (QR set), or shorter than a header → dropped (never answer an answer: no loops);
* unparseable or oversized → FORMERR (header echoed); EDNS version > 0 → BADVERS;
  opcode other than QUERY → NOTIMP; not exactly one question → FORMERR;
* a name outside the cluster domain (and a reverse name with no PTR of ours) → :class:`Forward`;
* a cluster name before the initial sync → SERVFAIL (EDE "Not Ready"), never a false NXDOMAIN;
  class other than IN/ANY or a zone transfer → REFUSED;
* unknown name → NXDOMAIN, existing name without the type (AAAA of an IPv4 Service) → NODATA, both
  with the zone's SOA in authority (negative TTL = the SOA minimum = the record TTL);
* a CNAME (ExternalName Service) answers every type, followed while its target is ours;
* SRV answers carry their targets' addresses in the additional section;
* over UDP an answer is cut to 512 bytes, or the client's EDNS size (at most :data:`UDP_PAYLOAD`):
  additional records go first, and if answers must go, TC is set so the client retries over TCP.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache

import dns.edns
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset
from dns.rdtypes.ANY import CNAME, NS, PTR, SOA, TXT
from dns.rdtypes.IN import AAAA, SRV, A

from services.dns.records import Addr, Cname, Ns, Ptr, Record, Srv, Txt, normalize
from services.dns.zone import Lookup, Zone

__all__ = ["MAX_QUERY_BYTES", "UDP_PAYLOAD", "Drop", "Forward", "Outcome", "Reply", "Responder"]

#: The EDNS UDP payload we advertise and the most we send over UDP (the DNS Flag Day 2020 value).
UDP_PAYLOAD = 1232
#: A query larger than this is refused with FORMERR (real queries are well under 600 bytes).
MAX_QUERY_BYTES = 4096
_MAX_CNAME_CHAIN = 8

IN = dns.rdataclass.IN
_T = dns.rdatatype
# dnspython's rdata constructors carry no annotations; these say what they return.
_Make = Callable[..., dns.rdata.Rdata]
_A: _Make = A.A
_AAAA: _Make = AAAA.AAAA
_SRV: _Make = SRV.SRV
_PTR: _Make = PTR.PTR
_CNAME: _Make = CNAME.CNAME
_NS: _Make = NS.NS
_TXT: _Make = TXT.TXT
_SOA: _Make = SOA.SOA


@dataclass(frozen=True, slots=True)
class Reply:
    wire: bytes
    rcode: int
    cached: bool = False
    bad: str = ""  # why the query was bad input (malformed, oversized), for the metrics


@dataclass(frozen=True, slots=True)
class Forward:
    """Not ours: send ``wire`` upstream; ``query`` is kept to build a SERVFAIL if that fails."""

    query: dns.message.Message
    wire: bytes


@dataclass(frozen=True, slots=True)
class Drop:
    reason: str


Outcome = Reply | Forward | Drop


@lru_cache(maxsize=65536)
def _name(text: str) -> dns.name.Name:
    return dns.name.from_text(text)


def _rdata(r: Record) -> dns.rdata.Rdata:
    if isinstance(r, Addr):
        return _AAAA(IN, _T.AAAA, r.ip) if r.v6 else _A(IN, _T.A, r.ip)
    if isinstance(r, Srv):
        return _SRV(IN, _T.SRV, r.priority, r.weight, r.port, _name(r.target))
    if isinstance(r, Ptr):
        return _PTR(IN, _T.PTR, _name(r.target))
    if isinstance(r, Cname):
        return _CNAME(IN, _T.CNAME, _name(r.target))
    if isinstance(r, Ns):
        return _NS(IN, _T.NS, _name(r.target))
    return _TXT(IN, _T.TXT, [r.text.encode()])


def _rdtype(r: Record) -> int:
    if isinstance(r, Addr):
        return _T.AAAA if r.v6 else _T.A
    return {Srv: _T.SRV, Ptr: _T.PTR, Cname: _T.CNAME, Ns: _T.NS, Txt: _T.TXT}[type(r)]


class Responder:
    """Answers queries from a :class:`Zone`; holds the cache of built answers.

    Cached: whole answers by query bytes (the fast path), and the dnspython RRsets and SOA they are
    built from. An answer is filed under every zone name it was derived from (the question, a
    CNAME's target, SRV targets); when the zone reports names as changed, exactly their answers and
    RRsets are dropped, so a busy cluster's churn costs rebuilding only what it touched.
    """

    def __init__(self, zone: Zone, *, cache_entries: int = 100_000, udp_payload: int = UDP_PAYLOAD) -> None:
        self.zone = zone
        self.cache_entries = cache_entries
        self.udp_payload = udp_payload
        self._udp: dict[bytes, tuple[bytes, int]] = {}
        self._tcp: dict[bytes, tuple[bytes, int]] = {}
        self._keys: dict[str, list[tuple[bool, bytes]]] = {}  # zone name → cached answers from it
        self._rrsets: dict[str, dict[int, dns.rrset.RRset]] = {}  # owner → rdtype → RRset
        self._soas: dict[str, tuple[int, dns.rrset.RRset]] = {}  # apex → (generation, SOA RRset)
        self._deps: list[str] = []

    @property
    def cached(self) -> int:
        return len(self._udp) + len(self._tcp)

    # --- entry point --------------------------------------------------------------------------------
    def handle(self, wire: bytes, tcp: bool = False) -> Outcome:
        if self.zone.changed:
            self._invalidate()
        hit = (self._tcp if tcp else self._udp).get(wire[2:])
        if hit is not None:
            return Reply(wire[:2] + hit[0][2:], hit[1], True)
        return self._slow(wire, tcp)

    def servfail(self, query: dns.message.Message, why: str, code: dns.edns.EDECode) -> Reply:
        """SERVFAIL for ``query``, with an Extended DNS Error saying why when the client speaks EDNS."""
        return self._error(query, dns.rcode.SERVFAIL, why, code)

    def _invalidate(self) -> None:
        changed, self.zone.changed = self.zone.changed, set()
        for name in changed:
            for tcp, key in self._keys.pop(name, ()):
                (self._tcp if tcp else self._udp).pop(key, None)
            self._rrsets.pop(name, None)

    def _remember(self, tcp: bool, key: bytes, reply: Reply) -> None:
        if self.cached >= self.cache_entries:
            self._udp.clear()
            self._tcp.clear()
            self._keys.clear()
            if self.cache_entries <= 0:
                return
        (self._tcp if tcp else self._udp)[key] = (reply.wire, reply.rcode)
        for name in self._deps:
            self._keys.setdefault(name, []).append((tcp, key))

    # --- slow path ------------------------------------------------------------------------------
    def _slow(self, wire: bytes, tcp: bool) -> Outcome:
        if len(wire) < 12:
            return Drop("malformed")
        if wire[2] & 0x80:  # the QR bit: an answer sent to us is never answered
            return Drop("not_a_query")
        if len(wire) > MAX_QUERY_BYTES:
            return self._formerr(wire, "oversized")
        try:
            query = dns.message.from_wire(wire)
        except Exception:  # dnspython raises many types for bad input; every one means FORMERR
            return self._formerr(wire, "malformed")
        if query.edns > 0:
            return self._error(query, dns.rcode.BADVERS)
        if query.opcode() != dns.opcode.QUERY:
            return self._error(query, dns.rcode.NOTIMP)
        if len(query.question) != 1:
            return self._error(query, dns.rcode.FORMERR, bad="malformed")
        q = query.question[0]
        qname = normalize(q.name.to_text())
        self._deps = [qname]
        look = self.zone.lookup(qname)
        if look.status == "forward":
            return Forward(query, wire)
        if not self.zone.synced:
            why = "cluster state not synced yet"
            return self._error(query, dns.rcode.SERVFAIL, why, dns.edns.EDECode.NOT_READY)
        if q.rdclass not in (IN, dns.rdataclass.ANY) or q.rdtype in (_T.AXFR, _T.IXFR):
            return self._error(query, dns.rcode.REFUSED)
        try:
            reply = self._answer(query, qname, q.rdtype, look, tcp)
        except dns.exception.DNSException:
            return self._error(query, dns.rcode.SERVFAIL)
        self._remember(tcp, wire[2:], reply)
        return reply

    def _answer(self, query: dns.message.Message, qname: str, qtype: int, look: Lookup, tcp: bool) -> Reply:
        resp = dns.message.make_response(query, recursion_available=True, our_payload=self.udp_payload)
        resp.flags |= dns.flags.AA
        if look.status == "nxdomain":
            resp.set_rcode(dns.rcode.NXDOMAIN)
            resp.authority.append(self._soa(look.apex))
        else:
            self._fill(resp, qname, look.records, qtype)
            if not resp.answer:
                resp.authority.append(self._soa(look.apex))
        return Reply(self._to_wire(resp, query, tcp), resp.rcode())

    def _fill(self, resp: dns.message.Message, owner: str, records: tuple[Record, ...], qtype: int) -> None:
        # Owners are lower case: the renderer compresses an owner equal to the question into a
        # pointer to it, so the client still reads its name as it spelled it.
        for _ in range(_MAX_CNAME_CHAIN):
            cnames = [r for r in records if isinstance(r, Cname)]
            if cnames and qtype not in (_T.CNAME, _T.ANY):
                resp.answer.append(self._rrset(owner, _T.CNAME, cnames))
                target = cnames[0].target
                self._deps.append(target)
                look = self.zone.lookup(target)
                if look.status != "answer":
                    return  # outside the zone (ExternalName): the client resolves the target
                owner, records = target, look.records
                continue
            break
        if qtype == _T.SOA and owner == self.zone.domain:
            resp.answer.append(self._soa(self.zone.domain))
            return
        by_type: dict[int, list[Record]] = {}
        for r in records:
            t = _rdtype(r)
            if qtype in (t, _T.ANY):
                by_type.setdefault(t, []).append(r)
        for t, recs in by_type.items():
            resp.answer.append(self._rrset(owner, t, recs))
        for r in by_type.get(_T.SRV, ()):
            assert isinstance(r, Srv)
            self._deps.append(r.target)
            look = self.zone.lookup(r.target)
            addrs = [a for a in look.records if isinstance(a, Addr)]
            for t in (_T.A, _T.AAAA):
                same = [a for a in addrs if _rdtype(a) == t]
                if same:
                    rrset = self._rrset(r.target, t, same)
                    if rrset not in resp.additional:
                        resp.additional.append(rrset)

    def _rrset(self, owner: str, rdtype: int, records: Sequence[Record]) -> dns.rrset.RRset:
        by_type = self._rrsets.setdefault(owner, {})
        rrset = by_type.get(rdtype)
        if rrset is None:
            rrset = dns.rrset.RRset(_name(owner), IN, dns.rdatatype.RdataType.make(rdtype))
            for r in records:
                rrset.add(_rdata(r), self.zone.ttl)
            by_type[rdtype] = rrset
        return rrset

    def _soa(self, apex: str) -> dns.rrset.RRset:
        held = self._soas.get(apex)
        if held is not None and held[0] == self.zone.generation:
            return held[1]
        s = self.zone.soa(apex)
        rd = _SOA(
            IN, _T.SOA, _name(s.mname), _name(s.rname), s.serial, s.refresh, s.retry, s.expire, s.minimum
        )
        rrset = dns.rrset.RRset(_name(apex), IN, _T.SOA)
        rrset.add(rd, s.minimum)
        self._soas[apex] = (self.zone.generation, rrset)
        return rrset

    def _to_wire(self, resp: dns.message.Message, query: dns.message.Message, tcp: bool) -> bytes:
        if tcp:
            return resp.to_wire(max_size=65535)
        limit = min(max(query.payload, 512), self.udp_payload) if query.edns >= 0 else 512
        # prefer_truncation: what does not fit is left out; TC only if answers or authority were cut.
        return resp.to_wire(max_size=limit, prefer_truncation=True)

    # --- errors -----------------------------------------------------------------------------------
    def _error(
        self,
        query: dns.message.Message,
        rcode: dns.rcode.Rcode,
        why: str = "",
        code: dns.edns.EDECode = dns.edns.EDECode.OTHER,
        *,
        bad: str = "",
    ) -> Reply:
        resp = dns.message.make_response(query, recursion_available=True, our_payload=self.udp_payload)
        if query.edns > 0:
            resp.use_edns(0, 0, self.udp_payload)  # BADVERS is answered in the version we speak
        resp.set_rcode(rcode)
        if why and query.edns >= 0:
            resp.use_edns(0, 0, self.udp_payload, options=[dns.edns.EDEOption(code, why)])
        return Reply(resp.to_wire(max_size=65535), rcode, bad=bad)

    @staticmethod
    def _formerr(wire: bytes, reason: str) -> Reply:
        """FORMERR for a query dnspython cannot parse: the header's ID, opcode and RD echoed, no question."""
        flags = int.from_bytes(wire[2:4], "big")
        resp = dns.message.Message(id=int.from_bytes(wire[:2], "big"))
        resp.flags = dns.flags.QR | (flags & dns.flags.RD)
        resp.set_opcode(dns.opcode.from_flags(flags))
        resp.set_rcode(dns.rcode.FORMERR)
        return Reply(resp.to_wire(), dns.rcode.FORMERR, bad=reason)
