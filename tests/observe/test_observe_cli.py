"""``nodemesh observe`` against a real nats-server: flows published to FLOWS come out filtered,
in order, as a table or Hubble-shaped JSON; ``--follow`` keeps printing new flows."""

from __future__ import annotations

import asyncio
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest

from localcluster.layout import ClusterInfo
from meshctl.main import main
from nodemesh import subjects
from nodemesh.bus import connect
from nodemesh.codec import encode
from nodemesh.messages.flow import HTTP, L7, Endpoint, Flow, Workload
from nodemesh.streams import provision
from testkit.natsserver import NatsServer
from tests.observe.flows import DEV, FE, WEB, WORLD, flow

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def data_dir(tmp_path: Path, nats_server: NatsServer) -> Iterator[Path]:
    (tmp_path / "run").mkdir()
    info = ClusterInfo(
        data_dir=str(tmp_path),
        nats_url=nats_server.url,
        api_url="http://127.0.0.1:9",
        xds_addr="127.0.0.1:9",
        nodes=[],
    )
    (tmp_path / "run" / "cluster.json").write_bytes(msgspec.json.encode(info))
    asyncio.run(_publish(nats_server.url, []))  # provision the streams
    yield tmp_path


async def _publish(url: str, items: list[tuple[str, bytes]]) -> None:
    bus = await connect(url, name="test-pub", max_wait=10)
    try:
        await provision(bus.js)
        for subject, data in items:
            await bus.js.publish(subject, data)
    finally:
        await bus.nc.close()


class Response(msgspec.Struct):
    """A ``-o json`` line: Hubble's GetFlowsResponse."""

    flow: Flow
    node_name: str = ""
    time: str = ""


def flow_of(line: str) -> Flow:
    return msgspec.json.decode(line, type=Response).flow


def publish(server: NatsServer, flows: list[Flow], node: str = "node-1") -> None:
    asyncio.run(_publish(server.url, [(subjects.flows(node), encode(f)) for f in flows]))


def observe(data_dir: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[str], str]:
    rc = main(["--data-dir", str(data_dir), "observe", *args])
    out, err = capsys.readouterr()
    return rc, out.splitlines(), err


def test_last_n_table(data_dir: Path, nats_server: NatsServer, capsys: pytest.CaptureFixture[str]) -> None:
    publish(nats_server, [flow(FE, WEB, dport=1000 + i) for i in range(30)])
    rc, lines, _ = observe(data_dir, capsys, "--last", "5")
    assert rc == 0
    assert lines[0].split() == [
        "TIMESTAMP",
        "SOURCE",
        "DESTINATION",
        "L7",
        "INFO",
        "TRAFFIC",
        "DIRECTION",
        "VERDICT",
        "TCP",
        "FLAGS",
    ]
    assert len(lines) == 6
    for i, line in enumerate(lines[1:]):
        assert f"prod/web-7d9f:{1025 + i} (ID:1000)" in line
        assert "prod/fe-abc:40000 (ID:1001)" in line
        assert line.startswith("Nov 26 22:04:57.123")
        assert "INGRESS" in line and "FORWARDED" in line and line.endswith("SYN")


def test_drop_reason_reserved_identity_and_filters(
    data_dir: Path, nats_server: NatsServer, capsys: pytest.CaptureFixture[str]
) -> None:
    publish(nats_server, [
        flow(DEV, WEB, verdict="DROPPED", etype=1, reason="POLICY_DENIED"),
        flow(WEB, WORLD, dip="1.1.1.1", proto="udp", dport=53, direction="EGRESS", verdict="DROPPED", etype=1,
             reason="AUTH_REQUIRED"),
        flow(FE, WEB),
    ])  # fmt: skip
    rc, lines, _ = observe(data_dir, capsys, "--type", "drop", "--to-identity", "world")
    assert rc == 0 and len(lines) == 2
    assert "1.1.1.1:53 (world)" in lines[1]
    assert "DROPPED (AUTH_REQUIRED)" in lines[1] and "EGRESS" in lines[1]
    rc, lines, _ = observe(data_dir, capsys, "--verdict", "DROPPED", "-n", "dev")
    assert (
        len(lines) == 2 and "dev/fe-xyz:40000 (ID:1002)" in lines[1] and "DROPPED (POLICY_DENIED)" in lines[1]
    )


def test_json_is_hubble_shaped(
    data_dir: Path, nats_server: NatsServer, capsys: pytest.CaptureFixture[str]
) -> None:
    sent = [flow(FE, WEB, dport=8080), flow(FE, WEB, dport=8081)]
    publish(nats_server, sent)
    rc, lines, _ = observe(data_dir, capsys, "-o", "json", "--last", "10")
    assert rc == 0
    assert [flow_of(line) for line in lines] == sent
    outer = msgspec.json.decode(lines[0])
    assert outer["node_name"] == "node-1" and outer["time"] == "2026-11-26T22:04:57.123456789Z"
    raw = outer["flow"]
    assert raw["IP"] == {"source": "10.244.1.5", "destination": "10.244.1.7", "ipVersion": "IPv4"}
    assert raw["IP"]["destination"] == "10.244.1.7"
    assert raw["l4"]["TCP"]["destination_port"] == 8080 and raw["l4"]["TCP"]["flags"] == {"SYN": True}
    assert raw["source"]["pod_name"] == "fe-abc" and raw["traffic_direction"] == "INGRESS"


def test_last_walks_back_past_non_matching_flows(
    data_dir: Path, nats_server: NatsServer, capsys: pytest.CaptureFixture[str]
) -> None:
    publish(nats_server, [flow(DEV, WEB, verdict="DROPPED", etype=1, reason="POLICY_DENIED", dport=7)])
    publish(nats_server, [flow(FE, WEB)] * 1500)
    rc, lines, _ = observe(data_dir, capsys, "--last", "3", "--verdict", "DROPPED", "-o", "json")
    assert rc == 0
    assert len(lines) == 1 and flow_of(lines[0]).destination.pod_name == "web-7d9f"  # type: ignore[union-attr]


def test_node_filter_uses_subject(
    data_dir: Path, nats_server: NatsServer, capsys: pytest.CaptureFixture[str]
) -> None:
    publish(nats_server, [flow(FE, WEB, node="", dport=1)], node="node-1")
    publish(nats_server, [flow(FE, WEB, node="", dport=2)], node="node-2")
    rc, lines, _ = observe(data_dir, capsys, "--node", "node-2", "-o", "json")
    assert rc == 0 and len(lines) == 1
    got = flow_of(lines[0])
    assert (
        got.node_name == "node-2"
        and msgspec.json.decode(lines[0])["node_name"] == "node-2"
        and got.l4
        and got.l4.tcp
        and got.l4.tcp.destination_port == 2
    )


def test_corrupt_messages_are_skipped(
    data_dir: Path, nats_server: NatsServer, capsys: pytest.CaptureFixture[str]
) -> None:
    asyncio.run(_publish(nats_server.url, [(subjects.flows("node-1"), b"\xc1garbage")]))
    publish(nats_server, [flow(FE, WEB)])
    rc, lines, err = observe(data_dir, capsys, "-o", "json")
    assert rc == 0 and len(lines) == 1
    assert "skipped 1 undecodable flow message" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--port", "http"], "error: port 'http' is not a port number"),
        (["--last", "-1"], "error: --last must be 0 or more"),
    ],
    ids=["bad-port", "negative-last"],
)
def test_bad_arguments(
    data_dir: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    rc, _, err = observe(data_dir, capsys, *args)
    assert rc == 1 and message in err


def test_no_cluster(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = observe(tmp_path, capsys)
    assert rc == 1 and "no local cluster" in err


def test_follow_prints_new_matching_flows(data_dir: Path, nats_server: NatsServer) -> None:
    publish(nats_server, [flow(FE, WEB, dport=1)])
    proc = subprocess.Popen(
        [sys.executable, "-m", "meshctl.main", "--data-dir", str(data_dir), "observe", "-f",
         "--last", "1", "-o", "json", "--from-pod", "prod/fe"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()  # type: ignore[union-attr]

    def next_port(timeout: float = 60.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                f = flow_of(lines.get(timeout=0.5))
                return f.l4.tcp.destination_port  # type: ignore[union-attr]
            except queue.Empty:
                assert proc.poll() is None, proc.stderr.read()  # type: ignore[union-attr]
        raise AssertionError("no flow printed")

    try:
        assert next_port() == 1  # history printed: the consumer is past its starting point
        publish(nats_server, [flow(FE, WEB, dport=2), flow(DEV, WEB, dport=3), flow(FE, WEB, dport=4)])
        assert [next_port(), next_port()] == [2, 4]
        assert lines.empty()
    finally:
        proc.terminate()
        proc.wait(10)
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]


def test_compact_and_dict_like_hubble(
    data_dir: Path, nats_server: NatsServer, capsys: pytest.CaptureFixture[str]
) -> None:
    fwd = flow(FE, WEB, dport=8080)
    fwd.is_reply, fwd.trace_observation_point, fwd.Summary = False, "TO_ENDPOINT", "TCP Flags: SYN"
    reply = flow(FE, WEB, sport=8080, dport=40000, syn=False)
    reply.is_reply, reply.trace_observation_point = True, "TO_ENDPOINT"
    drop = flow(DEV, WEB, verdict="DROPPED", etype=1, reason="POLICY_DENIED")
    drop.event_type["sub_type"], drop.is_reply = 133, False
    publish(nats_server, [fwd, reply, drop])
    rc, lines, _ = observe(data_dir, capsys, "-o", "compact", "--last", "3", "--print-node-name")
    assert rc == 0
    assert lines == [
        "Nov 26 22:04:57.123 [node-1]: prod/fe-abc:40000 (ID:1001) -> prod/web-7d9f:8080 (ID:1000) "
        "to-endpoint FORWARDED (TCP Flags: SYN)",
        # a reply: sides swapped back and the arrow flipped, as hubble prints it
        "Nov 26 22:04:57.123 [node-1]: prod/web-7d9f:40000 (ID:1000) <- prod/fe-abc:8080 (ID:1001) "
        "to-endpoint FORWARDED ()",
        "Nov 26 22:04:57.123 [node-1]: dev/fe-xyz:40000 (ID:1002) -> prod/web-7d9f:80 (ID:1000) "
        "Policy denied DROPPED ()",
    ]
    rc, lines, _ = observe(data_dir, capsys, "-o", "dict", "--last", "2")
    assert rc == 0
    assert lines == [
        "  TIMESTAMP: Nov 26 22:04:57.123",
        "     SOURCE: prod/fe-abc:8080",
        "DESTINATION: prod/web-7d9f:40000",
        "       TYPE: to-endpoint",
        "    VERDICT: FORWARDED",
        "    SUMMARY: ",
        "------------",
        "  TIMESTAMP: Nov 26 22:04:57.123",
        "     SOURCE: dev/fe-xyz:40000",
        "DESTINATION: prod/web-7d9f:80",
        "       TYPE: Policy denied",
        "    VERDICT: DROPPED",
        "    SUMMARY: ",
    ]


def _l7(code: int, method: str, url: str, *, time: str = "2026-11-26T22:04:57.123456789Z") -> Flow:
    resp = L7(type="RESPONSE", latency_ns="1000", http=HTTP(code=code, method=method, url=url))
    return flow(FE, WEB, l7=resp, etype=129, time=time)


def _describe(f: Flow) -> str:
    if f.l7 is not None and f.l7.http is not None:
        return f.l7.http.url
    part = f.l4.udp or f.l4.tcp if f.l4 is not None else None
    return f"port {part.destination_port if part else 0}"


def test_hubble_filter_flags(
    data_dir: Path, nats_server: NatsServer, capsys: pytest.CaptureFixture[str]
) -> None:
    publish(nats_server, [
        _l7(200, "GET", "http://web/api/items?HUBBLE_REDACTED"),
        _l7(404, "GET", "http://web/nope"),
        _l7(503, "POST", "http://web/api/cart"),
        flow(FE, WEB, dport=53, proto="udp"),
        flow(DEV, WEB, dport=80, node="node-2"),
    ], node="node-1")  # fmt: skip

    def urls(*args: str) -> list[str]:
        rc, lines, err = observe(data_dir, capsys, "-o", "json", "--last", "50", *args)
        assert rc == 0, err
        return [_describe(flow_of(line)) for line in lines]

    assert urls("--http-status", "5+") == ["http://web/api/cart"]
    assert urls("--http-status", "404", "--http-status", "2+") == [
        "http://web/api/items?HUBBLE_REDACTED",
        "http://web/nope",
    ]
    assert urls("--http-method", "post") == ["http://web/api/cart"]
    assert urls("--http-path", "^/api/") == ["http://web/api/items?HUBBLE_REDACTED", "http://web/api/cart"]
    # --not turns the next filter into an exclusion; the filters before and after it still allow
    assert urls("--type", "l7", "--not", "--http-path", "^/api/") == ["http://web/nope"]
    assert urls("--not", "--type", "l7") == ["port 53", "port 80"]
    assert urls("--not", "--protocol", "udp", "--from-namespace", "dev") == ["port 80"]
    assert urls("--to-namespace", "prod", "--protocol", "udp") == ["port 53"]
    assert urls("--node-name", "node-*", "--protocol", "udp") == ["port 53"]
    assert urls("--node-name", "default/node-2") == ["port 80"]


def test_workload_filters(
    data_dir: Path, nats_server: NatsServer, capsys: pytest.CaptureFixture[str]
) -> None:
    web = Endpoint(namespace="prod", pod_name="web-5d8f7c9b6-abcde", identity=1000,
                   workloads=[Workload(name="web", kind="Deployment")])  # fmt: skip
    db = Endpoint(namespace="prod", pod_name="db-0", identity=1003)  # no workloads: from the pod name
    publish(nats_server, [flow(web, db, dport=5432), flow(FE, web, dport=80)])
    for args, want in (
        (["--to-workload", "db"], [5432]),
        (["--to-workload", "StatefulSet/db"], [5432]),
        (["--to-workload", "Deployment/db"], []),
        (["--workload", "web"], [5432, 80]),
        (["--from-workload", "deployment/web"], [5432]),
    ):
        rc, lines, err = observe(data_dir, capsys, "-o", "json", *args)
        assert rc == 0, err
        assert [flow_of(line).l4.tcp.destination_port for line in lines] == want, args  # type: ignore[union-attr]


def test_since_and_until(data_dir: Path, nats_server: NatsServer, capsys: pytest.CaptureFixture[str]) -> None:
    now = datetime.now(UTC)
    stamps = [(now - timedelta(hours=h)).strftime("%Y-%m-%dT%H:%M:%S.%f") + "123Z" for h in (3, 2, 1)]
    publish(nats_server, [flow(FE, WEB, dport=1000 + i, time=t) for i, t in enumerate(stamps)])

    def ports(*args: str) -> list[int]:
        rc, lines, err = observe(data_dir, capsys, "-o", "json", *args)
        assert rc == 0, err
        return [flow_of(line).l4.tcp.destination_port for line in lines]  # type: ignore[union-attr]

    # every flow stored since then (all three were published now); the flow times decide
    assert ports("--since", "150m") == [1001, 1002]
    assert ports("--since", "4h", "--until", "90m") == [1000, 1001]
    assert ports("--until", stamps[0]) == [1000]
    assert ports("--since", "4h", "--last", "1") == [1002]
    assert ports("--since", stamps[1]) == [1001, 1002]  # RFC 3339 with nanoseconds


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--http-status", "4x"], "http status '4x' is not a code (404) or a prefix (4+, 50+)"),
        (["--http-path", "(["], "http path '([' is not a regular expression"),
        (["--since", "yesterday"], "time 'yesterday' is not RFC 3339, YYYY-MM-DD or an age such as 5m"),
        (["--since", "1h", "--until", "2h"], "--since is after --until"),
        (["--to-workload", "Deployment/"], "workload 'Deployment/' is not NAME or KIND/NAME"),
        (["--verdict", "DROPPED", "--not"], "--not must come before a filter flag"),
    ],
    ids=["status", "path", "time", "since-after-until", "workload", "dangling-not"],
)
def test_bad_filter_values(
    data_dir: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    rc, _, err = observe(data_dir, capsys, *args)
    assert rc == 1 and message in err
