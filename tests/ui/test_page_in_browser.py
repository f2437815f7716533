"""The service map page in a real headless browser (Debian's chromium), fed by a real nats-server.

Flows go into the FLOWS stream the way the datapath and the access log publish them; the page is
loaded, its JavaScript runs, and the rendered DOM must show the expected workloads, connections and
flow rows. A screenshot is kept (tmp_path, and ``$NODEMESH_ARTIFACTS`` when set) for people to look at.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import pytest
from aiohttp import web

from meshctl.ui.server import FlowFeed, make_app
from nodemesh import subjects
from nodemesh.bus import connect
from nodemesh.codec import encode
from nodemesh.messages.flow import HTTP, L7
from nodemesh.streams import provision
from testkit.natsserver import NatsServer, free_port
from tests.observe.flows import FE, WEB, WORLD, ep, flow

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
if os.environ.get("CI") and CHROMIUM is None:
    raise RuntimeError("CI: chromium is missing (scripts/install-system.sh installs it)")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no chromium (make install installs it)")


def _resp(code: int, ms: float, url: str = "http://web.prod/api") -> L7:
    return L7(type="RESPONSE", latency_ns=int(ms * 1e6), http=HTTP(code=code, method="GET", url=url))


async def _chromium(*args: str) -> str:
    assert CHROMIUM is not None
    proc = await asyncio.create_subprocess_exec(
        CHROMIUM,
        "--headless=new",
        "--no-sandbox",  # as root, chromium refuses to start with its sandbox
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--virtual-time-budget=6000",
        "--window-size=1280,900",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert proc.returncode == 0, err.decode(errors="replace")[-2000:]
    return out.decode(errors="replace")


def _keep_artifact(shot: Path) -> None:
    artifacts = os.environ.get("NODEMESH_ARTIFACTS")
    if artifacts:
        Path(artifacts).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(artifacts) / "service-map.png")


@needs_chromium
async def test_the_page_shows_workloads_connections_and_flows(tmp_path: Path) -> None:
    db = ep("prod", "db-0", 1003, "k8s:app=db")
    # L7 responses go server → client, as Hubble's do; the map counts them on the fe → web edge
    flows = [flow(WEB, FE, sport=8080, dport=41000, l7=_resp(200, 3)) for _ in range(5)]
    flows += [flow(WEB, FE, sport=8080, dport=41000, l7=_resp(503, 9))]
    flows += [flow(WEB, db, dport=5432) for _ in range(3)]
    flows += [flow(WORLD, WEB, dport=8080, verdict="DROPPED", reason="POLICY_DENIED")]
    with NatsServer(store_dir=str(tmp_path / "nats")) as nats:
        bus = await connect(nats.url, name="ui-test", max_wait=10)
        runner: web.AppRunner | None = None
        feed = FlowFeed(bus, keep=1000)
        try:
            await provision(bus.js)
            for i, f in enumerate(flows):
                await bus.js.publish(subjects.flows(f"node-{1 + i % 2}"), encode(f))
            await feed.start()
            await asyncio.wait_for(feed.ready.wait(), 10)
            port = free_port()
            runner = web.AppRunner(make_app(feed))
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", port).start()
            url = f"http://127.0.0.1:{port}/"

            dom = await _chromium("--dump-dom", url)
            assert 'data-loaded="1"' in dom, dom[:2000]
            for node in ("prod/fe", "prod/web", "prod/db", "reserved:world"):
                assert f'data-id="{node}"' in dom, node
            assert 'data-source="prod/fe" data-target="prod/web"' in dom
            assert 'class="edge dropped" data-source="reserved:world"' in dom
            assert "17% err" in dom and "p50 3ms" in dom  # 1 of 6 answers a 503; median 3 ms
            assert dom.count("<tr class=") == len(flows)
            assert "GET http://web.prod/api → 503 9ms" in dom
            assert "dropped (POLICY_DENIED)" in dom

            # a flow published now shows up without a reload: the feed follows the stream
            await bus.js.publish(subjects.flows("node-1"), encode(flow(db, WEB, dport=9999)))
            await asyncio.sleep(1.0)
            dom = await _chromium("--dump-dom", url)
            assert "9999/TCP" in dom

            shot = tmp_path / "service-map.png"
            await _chromium(f"--screenshot={shot}", url)
            assert shot.stat().st_size > 10_000
            _keep_artifact(shot)
        finally:
            if runner is not None:
                await runner.cleanup()
            await feed.stop()
            await bus.nc.close()
