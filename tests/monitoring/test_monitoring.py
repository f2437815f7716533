"""`up --monitoring`'s pieces without a cluster: the generated scrape config, and NATS metrics from a
real nats-server's monitoring endpoint as Prometheus text (the e2e suite runs the whole thing)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import yaml
from prometheus_client.parser import text_string_to_metric_families

from localcluster.monitoring import Target, scrape_config
from localcluster.natsexporter import varz_metrics
from testkit.natsserver import NatsServer, free_port

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "nodemesh-dashboard.json"


def test_scrape_config_one_job_per_service_envoy_on_its_stats_path() -> None:
    cfg = yaml.safe_load(
        scrape_config(
            [
                Target("datapath", "datapath-node-1", "node-1", 4001),
                Target("datapath", "datapath-node-2", "node-2", 4002),
                Target("envoy", "envoy-node-1", "node-1", 9901),
                Target("ui", "ui", "", 12000),
                Target("xds", "xds", "", 0),
            ]
        )
    )
    jobs = {j["job_name"]: j for j in cfg["scrape_configs"]}
    assert set(jobs) == {"datapath", "envoy"}  # the page is not scraped; a process without a port neither
    assert jobs["envoy"]["metrics_path"] == "/stats/prometheus"
    targets = jobs["datapath"]["static_configs"]
    assert [t["targets"] for t in targets] == [["127.0.0.1:4001"], ["127.0.0.1:4002"]]
    assert targets[1]["labels"] == {"process": "datapath-node-2", "node": "node-2"}


def test_varz_fields_become_the_exporters_metrics() -> None:
    fams = {
        f.name: f
        for f in varz_metrics({"connections": 3, "in_msgs": 10, "cpu": 1.5, "x": "no"}, {"streams": 4}, "S1")
    }
    assert fams["gnatsd_varz_connections"].type == "gauge"
    assert (
        fams["gnatsd_varz_in_msgs"].samples[0].name == "gnatsd_varz_in_msgs"
    )  # the exporter's name, no _total
    assert fams["gnatsd_jsz_streams"].samples[0].value == 4
    assert fams["gnatsd_varz_connections"].samples[0].labels == {"server_id": "S1"}


def test_the_exporter_serves_a_real_servers_metrics(tmp_path: Path) -> None:
    mon = free_port()
    with NatsServer(store_dir=str(tmp_path), config=f"http: 127.0.0.1:{mon}\n"):
        port = free_port()
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "localcluster.natsexporter",
                "--monitor",
                f"127.0.0.1:{mon}",
                "--listen",
                f"127.0.0.1:{port}",
            ]
        )
        try:
            text = ""
            for _ in range(100):
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                        text = r.read().decode()
                    if "gnatsd_varz_connections" in text:
                        break
                except OSError:
                    pass
                time.sleep(0.1)
            names = {f.name for f in text_string_to_metric_families(text)}
            assert {
                "nats_up",
                "gnatsd_varz_connections",
                "gnatsd_varz_in_msgs",
                "gnatsd_jsz_streams",
            } <= names
            assert "nats_up 1.0" in text
        finally:
            proc.terminate()
            proc.wait(10)
    # with the server gone, a scrape still answers, with nats_up 0
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "localcluster.natsexporter",
            "--monitor",
            f"127.0.0.1:{mon}",
            "--listen",
            f"127.0.0.1:{port}",
        ]
    )
    try:
        for _ in range(100):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=3) as r:
                    text = r.read().decode()
                break
            except OSError:
                time.sleep(0.1)
        assert "nats_up 0.0" in text
    finally:
        proc.terminate()
        proc.wait(10)


def test_every_dashboard_panel_has_a_query_and_a_legend() -> None:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    for p in panels:
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["expr"].strip() and t["legendFormat"].strip(), p["title"]
