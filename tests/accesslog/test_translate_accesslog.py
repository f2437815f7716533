"""Translation: every HTTP connection manager it builds logs to the access log cluster, only when asked."""

from __future__ import annotations

import pytest
from envoy.config.listener.v3.listener_pb2 import Listener
from envoy.extensions.access_loggers.grpc.v3.als_pb2 import HttpGrpcAccessLogConfig
from envoy.extensions.filters.network.http_connection_manager.v3.http_connection_manager_pb2 import (
    HttpConnectionManager,
)

from services.xds.bootstrap import ALS_CLUSTER, render_bootstrap
from services.xds.translate import TranslateInput, translate
from services.xds.translate.types import LISTENER
from tests.accesslog.test_envoy_accesslog import objects


def hcms(listeners: dict[str, Listener]) -> list[HttpConnectionManager]:
    out = []
    for lst in listeners.values():
        for chain in lst.filter_chains:
            for f in chain.filters:
                if f.name == "envoy.filters.network.http_connection_manager":
                    m = HttpConnectionManager()
                    f.typed_config.Unpack(m)
                    out.append(m)
    return out


def test_access_log_on_every_generated_hcm_only_when_asked() -> None:
    objs = objects("127.0.100.7", 8080, 3000, 3001)
    on = hcms(translate(TranslateInput(objects=objs, access_log_cluster=ALS_CLUSTER)).resources[LISTENER])
    assert on
    for m in on:
        assert [a.name for a in m.access_log] == ["envoy.access_loggers.http_grpc"]
        cfg = HttpGrpcAccessLogConfig()
        m.access_log[0].typed_config.Unpack(cfg)
        assert cfg.common_config.grpc_service.envoy_grpc.cluster_name == ALS_CLUSTER
        assert cfg.common_config.log_name == "nodemesh"
        assert [(t.tag, t.literal.value) for t in cfg.common_config.custom_tags] == [
            ("nodemesh.direction", "INGRESS")
        ]
    off = hcms(translate(TranslateInput(objects=objs)).resources[LISTENER])
    assert off and all(not m.access_log for m in off)


def test_bootstrap_always_has_the_als_cluster() -> None:
    def als(**kw: object) -> dict[str, object]:
        boot = render_bootstrap("node-1", "127.0.0.1", 18000, 0, **kw)  # type: ignore[arg-type]
        (c,) = [c for c in boot["static_resources"]["clusters"] if c["name"] == ALS_CLUSTER]
        return dict(c["load_assignment"])

    assert als()["endpoints"] == []
    (tcp,) = als(als_port=9123)["endpoints"]
    assert tcp["lb_endpoints"][0]["endpoint"]["address"]["socket_address"] == {
        "address": "127.0.0.1",
        "port_value": 9123,
    }
    (unix,) = als(als_socket="/run/nm/als.sock")["endpoints"]
    assert unix["lb_endpoints"][0]["endpoint"]["address"] == {"pipe": {"path": "/run/nm/als.sock"}}


def test_bootstrap_rejects_a_bad_als_port() -> None:
    with pytest.raises(ValueError, match="als_port"):
        render_bootstrap("node-1", "127.0.0.1", 18000, 0, als_port=70000)
