"""``nodemesh up --monitoring``: Prometheus (Debian's package) scraping every process, and the service map.

The scrape configuration is generated from the planned processes (pure: :func:`scrape_config`), one job
per service so a query can select ``job="datapath"``; every target carries its process name and node as
labels. nodemesh services and the API server expose ``/metrics`` on their health port; Envoy its stats
as Prometheus text on the admin port's ``/stats/prometheus``; nats-server, whose monitoring endpoint
speaks JSON, through :mod:`localcluster.natsexporter` (job ``nats``).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass

import yaml

__all__ = ["SCRAPE_INTERVAL_S", "Target", "prometheus_argv", "prometheus_binary", "scrape_config"]

SCRAPE_INTERVAL_S = 2  # short: a local cluster is for watching changes as they happen


@dataclass(frozen=True)
class Target:
    service: str  # job name: datapath, authd, envoy, xds, …
    name: str  # the process's name (datapath-node-1, …)
    node: str  # "" for cluster-wide processes
    port: int


_METRICS_PATH = {"envoy": "/stats/prometheus", "prometheus": "/metrics"}
_NOT_SCRAPED = {"ui", "nats-exporter"}  # the exporter is scraped as job "nats" (supervisor.py)


def scrape_config(targets: list[Target], interval_s: int = SCRAPE_INTERVAL_S) -> str:
    """Prometheus' YAML configuration scraping ``targets``."""
    jobs: dict[str, list[Target]] = {}
    for t in targets:
        if t.service in _NOT_SCRAPED or not t.port:
            continue
        jobs.setdefault(t.service, []).append(t)
    cfg = {
        "global": {"scrape_interval": f"{interval_s}s", "evaluation_interval": f"{interval_s}s"},
        "scrape_configs": [
            {
                "job_name": service,
                "metrics_path": _METRICS_PATH.get(service, "/metrics"),
                "static_configs": [
                    {
                        "targets": [f"127.0.0.1:{t.port}"],
                        "labels": {"process": t.name, **({"node": t.node} if t.node else {})},
                    }
                    for t in sorted(ts, key=lambda t: t.name)
                ],
            }
            for service, ts in sorted(jobs.items())
        ],
    }
    return yaml.safe_dump(cfg, sort_keys=False)


def prometheus_binary() -> str | None:
    return shutil.which("prometheus")


def prometheus_argv(binary: str, config: str, data: str, port: int) -> list[str]:
    return [
        binary,
        f"--config.file={config}",
        f"--storage.tsdb.path={data}",
        "--storage.tsdb.retention.time=1d",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
    ]
